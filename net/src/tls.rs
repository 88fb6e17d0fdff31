//! TLS for both ends: a development PKI made with rcgen, and rustls configurations for
//! QUIC (TLS 1.3 only, ring provider, Flotilla's ALPN).
//!
//! The development PKI is a CA (`ca.pem`, `ca.key`) and a server certificate signed by it
//! (`server.pem`, `server.key`), created in a directory on first use and reused after. It is
//! meant for tests and trials: clients trust `ca.pem` (compare its SHA-256 fingerprint out
//! of band), and production deployments pass their own certificate and key instead.

use crate::transport::Tuning;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use sha2::{Digest, Sha256};

/// Why a TLS file or configuration could not be made.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// A PEM file is garbled or holds nothing of the expected kind.
    #[error("{path}: not a usable PEM file ({what}): {reason}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What was looked for (certificate, private key).
        what: &'static str,
        /// What went wrong.
        reason: String,
    },
    /// rcgen failed to generate a key or certificate.
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    /// rustls refused the certificates or keys (e.g. a key not matching its certificate).
    #[error("TLS configuration refused: {0}")]
    Rustls(#[from] rustls::Error),
    /// The client certificate verifier could not be built from the CA file.
    #[error("client CA {path} unusable: {reason}")]
    ClientVerifier {
        /// The CA file.
        path: PathBuf,
        /// What rustls said.
        reason: String,
    },
    /// The rustls configuration lacks the cipher suite QUIC needs for its initial packets.
    #[error("TLS configuration unusable for QUIC: {0}")]
    Quic(String),
}

/// Paths of a development PKI and the CA's fingerprint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevPki {
    /// The directory holding the files.
    pub dir: PathBuf,
    /// CA certificate (what clients trust).
    pub ca_cert: PathBuf,
    /// CA private key (mode 0600).
    pub ca_key: PathBuf,
    /// Server certificate, signed by the CA.
    pub server_cert: PathBuf,
    /// Server private key (mode 0600).
    pub server_key: PathBuf,
    /// SHA-256 of the CA certificate's DER, as colon-separated upper-case hex.
    pub ca_fingerprint: String,
    /// Whether this call created the files (false when they were reused).
    pub created: bool,
}

/// A certificate and key issued by a [`DevPki`], as PEM files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedCert {
    /// The certificate.
    pub cert: PathBuf,
    /// Its private key (mode 0600).
    pub key: PathBuf,
}

const CA_NAME: &str = "Flotilla development CA";

impl DevPki {
    /// Loads the PKI in `dir`, creating it first if `ca.pem` is absent. The server
    /// certificate names `localhost`, `127.0.0.1`, `::1` and `extra_names`; an existing one is
    /// reused as it is (delete the files to change its names).
    pub fn load_or_create(dir: &Path, extra_names: &[String]) -> Result<Self, TlsError> {
        let mut pki = Self {
            dir: dir.to_path_buf(),
            ca_cert: dir.join("ca.pem"),
            ca_key: dir.join("ca.key"),
            server_cert: dir.join("server.pem"),
            server_key: dir.join("server.key"),
            ca_fingerprint: String::new(),
            created: false,
        };
        if !pki.ca_cert.exists() {
            fs::create_dir_all(dir).map_err(|source| TlsError::Io { path: dir.to_path_buf(), source })?;
            pki.create(extra_names)?;
            pki.created = true;
        }
        let ca = load_certs(&pki.ca_cert)?;
        pki.ca_fingerprint = ca.first().map(|der| fingerprint(der)).unwrap_or_default();
        // Check that the rest is readable now rather than at the first connection.
        load_certs(&pki.server_cert)?;
        load_key(&pki.server_key)?;
        load_key(&pki.ca_key)?;
        Ok(pki)
    }

    fn create(&self, extra_names: &[String]) -> Result<(), TlsError> {
        let ca_key = KeyPair::generate()?;
        let ca = ca_params().self_signed(&ca_key)?;
        let issuer = Issuer::new(ca_params(), &ca_key);
        let mut names = vec!["localhost".to_string(), "127.0.0.1".to_string(), "::1".to_string()];
        names.extend(extra_names.iter().cloned());
        let server_key = KeyPair::generate()?;
        let server = leaf_params(names, "flotilla coordinator", ExtendedKeyUsagePurpose::ServerAuth)?
            .signed_by(&server_key, &issuer)?;
        write_file(&self.ca_key, ca_key.serialize_pem().as_bytes(), true)?;
        write_file(&self.server_cert, server.pem().as_bytes(), false)?;
        write_file(&self.server_key, server_key.serialize_pem().as_bytes(), true)?;
        // The CA certificate last: its presence marks a complete PKI.
        write_file(&self.ca_cert, ca.pem().as_bytes(), false)
    }

    /// Issues a client certificate for `name` (for mutual TLS), written as
    /// `client-<name>.pem` and `client-<name>.key` in the PKI's directory.
    pub fn issue_client_cert(&self, name: &str) -> Result<IssuedCert, TlsError> {
        let ca_key = read_file(&self.ca_key)?;
        let ca_key = String::from_utf8(ca_key)
            .ok()
            .and_then(|pem| KeyPair::from_pem(&pem).ok())
            .ok_or_else(|| pem_error(&self.ca_key, "private key", "not a PEM key rcgen can sign with".into()))?;
        let issuer = Issuer::new(ca_params(), &ca_key);
        let key = KeyPair::generate()?;
        let cert =
            leaf_params(vec![name.to_string()], name, ExtendedKeyUsagePurpose::ClientAuth)?.signed_by(&key, &issuer)?;
        let issued = IssuedCert {
            cert: self.dir.join(format!("client-{name}.pem")),
            key: self.dir.join(format!("client-{name}.key")),
        };
        write_file(&issued.key, key.serialize_pem().as_bytes(), true)?;
        write_file(&issued.cert, cert.pem().as_bytes(), false)?;
        Ok(issued)
    }
}

/// The CA's parameters; deterministic, so that an issuer can be rebuilt from the key alone.
fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, CA_NAME);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    params
}

fn leaf_params(
    names: Vec<String>,
    common_name: &str,
    usage: ExtendedKeyUsagePurpose,
) -> Result<CertificateParams, TlsError> {
    let mut params = CertificateParams::new(names)?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, common_name);
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![usage];
    params.use_authority_key_identifier_extension = true;
    Ok(params)
}

/// SHA-256 of a certificate's DER as colon-separated upper-case hex.
pub fn fingerprint(der: &[u8]) -> String {
    Sha256::digest(der).iter().map(|b| format!("{b:02X}")).collect::<Vec<_>>().join(":")
}

fn read_file(path: &Path) -> Result<Vec<u8>, TlsError> {
    fs::read(path).map_err(|source| TlsError::Io { path: path.to_path_buf(), source })
}

fn write_file(path: &Path, bytes: &[u8], secret: bool) -> Result<(), TlsError> {
    let io = |source| TlsError::Io { path: path.to_path_buf(), source };
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = secret;
    let mut file = options.open(path).map_err(io)?;
    file.write_all(bytes).map_err(io)?;
    file.sync_all().map_err(io)
}

fn pem_error(path: &Path, what: &'static str, reason: String) -> TlsError {
    TlsError::Pem { path: path.to_path_buf(), what, reason }
}

/// Every certificate of a PEM file; an error if it holds none or is garbled.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read_file(path)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(path, "certificate", e.to_string()))?;
    if certs.is_empty() {
        return Err(pem_error(path, "certificate", "no CERTIFICATE section found".into()));
    }
    Ok(certs)
}

/// The private key of a PEM file (PKCS#8, PKCS#1 or SEC1).
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = read_file(path)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| pem_error(path, "private key", e.to_string()))
}

fn root_store(ca_file: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(ca_file)? {
        roots.add(cert).map_err(|e| pem_error(ca_file, "CA certificate", e.to_string()))?;
    }
    Ok(roots)
}

/// ring's provider with AES-128-GCM preferred over AES-256-GCM (both ends use this order, so
/// it is the one negotiated): every model and update is sealed and opened with it, and on
/// AES-NI/VAES hardware it is ~15 % cheaper per byte, at the strength TLS 1.3 mandates.
fn provider() -> Arc<CryptoProvider> {
    let mut provider = rustls::crypto::ring::default_provider();
    provider.cipher_suites.sort_by_key(|suite| suite.suite() != rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
    Arc::new(provider)
}

/// What a coordinator presents and whom it accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerTls {
    /// Certificate chain (PEM), leaf first.
    pub cert: PathBuf,
    /// Private key (PEM).
    pub key: PathBuf,
    /// With mutual TLS: the CA (PEM) that must have signed every client's certificate.
    pub client_ca: Option<PathBuf>,
}

/// What a client trusts and presents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientTls {
    /// The CA (PEM) the coordinator's certificate must chain to.
    pub ca: PathBuf,
    /// With mutual TLS: this client's certificate and key (PEM).
    pub identity: Option<IssuedCert>,
}

/// A rustls server configuration: TLS 1.3, ring, `alpn`, optional client authentication.
pub fn server_crypto(tls: &ServerTls, alpn: &[u8]) -> Result<rustls::ServerConfig, TlsError> {
    let certs = load_certs(&tls.cert)?;
    let key = load_key(&tls.key)?;
    let builder =
        rustls::ServerConfig::builder_with_provider(provider()).with_protocol_versions(&[&rustls::version::TLS13])?;
    let builder = match &tls.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(root_store(ca)?), provider())
                .build()
                .map_err(|e| TlsError::ClientVerifier { path: ca.clone(), reason: e.to_string() })?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_single_cert(certs, key)?;
    config.alpn_protocols = vec![alpn.to_vec()];
    Ok(config)
}

/// A rustls client configuration: TLS 1.3, ring, `alpn`, the given CA as the only root.
pub fn client_crypto(tls: &ClientTls, alpn: &[u8]) -> Result<rustls::ClientConfig, TlsError> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(root_store(&tls.ca)?);
    let mut config = match &tls.identity {
        None => builder.with_no_client_auth(),
        Some(identity) => builder.with_client_auth_cert(load_certs(&identity.cert)?, load_key(&identity.key)?)?,
    };
    config.alpn_protocols = vec![alpn.to_vec()];
    Ok(config)
}

/// A quinn server configuration from [`server_crypto`] and the transport settings of `tuning`.
pub fn quic_server_config(tls: &ServerTls, alpn: &[u8], tuning: &Tuning) -> Result<quinn::ServerConfig, TlsError> {
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(server_crypto(tls, alpn)?)
        .map_err(|e| TlsError::Quic(e.to_string()))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    config.transport_config(Arc::new(crate::transport::transport_config(tuning)));
    Ok(config)
}

/// A quinn client configuration from [`client_crypto`] and the transport settings of `tuning`.
pub fn quic_client_config(tls: &ClientTls, alpn: &[u8], tuning: &Tuning) -> Result<quinn::ClientConfig, TlsError> {
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(client_crypto(tls, alpn)?)
        .map_err(|e| TlsError::Quic(e.to_string()))?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    config.transport_config(Arc::new(crate::transport::transport_config(tuning)));
    Ok(config)
}

#[cfg(test)]
mod tests;

/// 32 bytes from the operating system's generator (through ring, which TLS already uses), or
/// `None` when it cannot be read.
pub fn os_random() -> Option<[u8; 32]> {
    let mut bytes = [0u8; 32];
    rustls::crypto::ring::default_provider().secure_random.fill(&mut bytes).ok()?;
    Some(bytes)
}
