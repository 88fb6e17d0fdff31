use super::*;
use crate::transport::Tuning;

#[test]
fn dev_pki_is_created_once_then_reused() {
    let dir = tempfile::tempdir().unwrap();
    let first = DevPki::load_or_create(dir.path(), &["coord.example".into()]).unwrap();
    assert!(first.created);
    assert_eq!(first.ca_fingerprint.len(), 32 * 3 - 1);
    let pem = fs::read_to_string(&first.server_cert).unwrap();
    let second = DevPki::load_or_create(dir.path(), &[]).unwrap();
    assert!(!second.created);
    assert_eq!(second.ca_fingerprint, first.ca_fingerprint);
    assert_eq!(fs::read_to_string(&second.server_cert).unwrap(), pem);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        for key in [&first.ca_key, &first.server_key] {
            assert_eq!(fs::metadata(key).unwrap().permissions().mode() & 0o777, 0o600, "{key:?}");
        }
    }
}

#[test]
fn server_and_client_configs_build_with_and_without_mtls() {
    let dir = tempfile::tempdir().unwrap();
    let pki = DevPki::load_or_create(dir.path(), &[]).unwrap();
    let client_cert = pki.issue_client_cert("edge-1").unwrap();
    let server = ServerTls { cert: pki.server_cert.clone(), key: pki.server_key.clone(), client_ca: None };
    assert!(quic_server_config(&server, b"x", &Tuning::default()).is_ok());
    let mtls = ServerTls { client_ca: Some(pki.ca_cert.clone()), ..server };
    assert!(quic_server_config(&mtls, b"x", &Tuning::default()).is_ok());
    let client = ClientTls { ca: pki.ca_cert.clone(), identity: Some(client_cert) };
    assert!(quic_client_config(&client, b"x", &Tuning::default()).is_ok());
}

#[test]
fn missing_and_garbled_files_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.pem");
    let message = load_certs(&missing).unwrap_err().to_string();
    assert!(message.contains("nope.pem"), "{message}");
    let garbled = dir.path().join("garbled.pem");
    fs::write(&garbled, "-----BEGIN CERTIFICATE-----\n!!!not base64!!!\n-----END CERTIFICATE-----\n").unwrap();
    let message = load_certs(&garbled).unwrap_err().to_string();
    assert!(message.contains("garbled.pem") && message.contains("certificate"), "{message}");
    fs::write(&garbled, "hello").unwrap();
    let message = load_key(&garbled).unwrap_err().to_string();
    assert!(message.contains("garbled.pem") && message.contains("private key"), "{message}");
}

#[test]
fn aes_128_gcm_is_preferred_and_the_other_tls13_suites_remain() {
    let suites: Vec<_> = provider().cipher_suites.iter().map(|s| s.suite()).collect();
    assert_eq!(suites.first(), Some(&rustls::CipherSuite::TLS13_AES_128_GCM_SHA256));
    assert!(suites.contains(&rustls::CipherSuite::TLS13_AES_256_GCM_SHA384));
    assert!(suites.contains(&rustls::CipherSuite::TLS13_CHACHA20_POLY1305_SHA256));
}
