use std::net::UdpSocket;
use std::time::Duration;

use super::*;

const TAG: ConnectionTag = ConnectionTag([0xA1, 0xB2, 0xC3, 0xD4]);

/// A long-header packet: `first` byte, `version`, the ids, then `rest` (token and length
/// fields and payload), padded with `pad` to `size` bytes.
fn long(first: u8, version: u32, dcid: &[u8], scid: &[u8], rest: &[u8], size: usize) -> Vec<u8> {
    let mut p = vec![first];
    p.extend_from_slice(&version.to_be_bytes());
    p.push(dcid.len() as u8);
    p.extend_from_slice(dcid);
    p.push(scid.len() as u8);
    p.extend_from_slice(scid);
    p.extend_from_slice(rest);
    p.resize(size.max(p.len()), 0x5A);
    p
}

/// A client's first Initial: no token, a 2-byte packet length of `length`, in a datagram of `size`.
fn initial(dcid_len: usize, length: u16, size: usize) -> Vec<u8> {
    let length = (0x4000 | length).to_be_bytes();
    long(0xC3, 1, &vec![7; dcid_len], &[9; 8], &[0x00, length[0], length[1]], size)
}

fn short(dcid: &[u8], size: usize) -> Vec<u8> {
    let mut p = vec![0x43];
    p.extend_from_slice(dcid);
    p.resize(size, 0x33);
    p
}

fn tagged_cid() -> Vec<u8> {
    TaggedConnectionIdGenerator::new(TAG, 42).generate_cid().to_vec()
}

/// Sends every case to a filtered socket, then a marker that passes; returns which cases
/// arrived (loopback keeps a socket pair's order and drops nothing at this rate).
fn arrivals(cases: &[(&str, Vec<u8>)]) -> Vec<String> {
    let receiver = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None).unwrap();
    receiver.bind(&"127.0.0.1:0".parse::<std::net::SocketAddr>().unwrap().into()).unwrap();
    attach(&receiver, TAG).unwrap();
    let receiver: UdpSocket = receiver.into();
    receiver.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
    let to = receiver.local_addr().unwrap();
    let mut marker = short(&tagged_cid(), 64);
    marker[63] = 0xEE;
    for (_, bytes) in cases {
        sender.send_to(bytes, to).unwrap();
    }
    sender.send_to(&marker, to).unwrap();
    let mut seen = Vec::new();
    let mut buf = vec![0u8; 65_536];
    loop {
        let n = receiver.recv(&mut buf).expect("the marker arrives");
        if buf[..n] == marker[..] {
            return seen;
        }
        let name = cases.iter().find(|(_, bytes)| bytes[..] == buf[..n]).map_or("unknown", |(name, _)| name);
        seen.push(name.to_string());
    }
}

#[test]
fn tagged_ids_validate_and_others_do_not() {
    let mut generator = TaggedConnectionIdGenerator::new(TAG, 42);
    let cid = generator.generate_cid();
    assert_eq!(cid.len(), CID_LEN);
    assert_eq!(&cid[..4], &TAG.0);
    assert!(generator.validate(&cid).is_ok());
    // Another key's id behind the same tag, and the same id without its tag.
    let other = TaggedConnectionIdGenerator::new(TAG, 43).generate_cid();
    assert!(generator.validate(&other).is_err());
    assert!(generator.validate(&ConnectionId::new(&cid[4..])).is_err());
    let mut bytes = cid.to_vec();
    bytes[0] ^= 1;
    assert!(generator.validate(&ConnectionId::new(&bytes)).is_err());
}

#[test]
fn the_program_assembles_with_every_jump_in_range() {
    let program = program(TAG).unwrap();
    assert!(program.len() > 40 && program.len() < 256, "{} instructions", program.len());
    assert_eq!(program.last().map(|i| (i.code, i.k)), Some((RET | K, 0)));
}

#[test]
fn junk_is_dropped_in_the_kernel_and_quic_passes() {
    let ours = tagged_cid();
    let mut foreign = ours.clone();
    foreign[1] ^= 0xFF;
    // The fixed bit greased (RFC 9287).
    let mut greased = short(&ours, 100);
    greased[0] = 0x03;
    let eight_byte_length = {
        let mut rest = vec![0x00, 0xC0, 0, 0, 0, 0, 0];
        rest.extend_from_slice(&[0x04, 0x90]); // 1,168 (to the end) in eight bytes.
        long(0xC0, 1, &[1; 8], &[2; 8], &rest, 1200)
    };
    let huge_eight_byte_length = {
        let rest = [0x00, 0xC0, 0, 0, 1, 0, 0, 0, 0];
        long(0xC0, 1, &[1; 8], &[2; 8], &rest, 1200)
    };
    let token = {
        let mut rest = vec![0x40, 0x20]; // A 32-byte token.
        rest.extend_from_slice(&[0xAB; 32]);
        rest.extend_from_slice(&[0x44, 0xD9]); // Length 1,241: to the end.
        long(0xC1, 1, &[1; 8], &[2; 8], &rest, 1300)
    };
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("short, our tag", short(&ours, 200)),
        ("short, a foreign id", short(&foreign, 200)),
        ("short, greased", greased),
        ("one byte", vec![0x40]),
        ("short, cut inside the id", vec![0x40, 0xA1, 0xB2]),
        ("initial", initial(8, 1200 - 26, 1200)),
        ("initial, 20-byte id", initial(20, 1250 - 38, 1250)),
        ("initial, short of the datagram", initial(8, 1200 - 27, 1200)),
        ("initial, one byte over", initial(8, 1200 - 25, 1200)),
        ("initial, length past the datagram", initial(8, 5000, 1200)),
        ("initial, short datagram", initial(8, 100, 1199)),
        ("initial, 7-byte id", initial(7, 1200 - 25, 1200)),
        ("initial, 21-byte id", initial(21, 1200 - 39, 1200)),
        ("initial, 21-byte source id", long(0xC3, 1, &[1; 8], &[2; 21], &[0x00, 0x41, 0x00], 1200)),
        ("initial, token", token),
        ("initial, 1-byte length", long(0xC0, 1, &[1; 8], &[2; 8], &[0x00, 0x30], 1200)),
        ("initial, 8-byte length", eight_byte_length),
        ("initial, 2^32-byte length", huge_eight_byte_length),
        ("initial, token past the datagram", long(0xC0, 1, &[1; 8], &[2; 8], &[0x7F, 0xFF], 1200)),
        ("handshake to our id", long(0xE0, 1, &ours, &[2; 8], &[], 300)),
        ("handshake to a foreign id", long(0xE0, 1, &foreign, &[2; 8], &[], 300)),
        ("0-rtt", long(0xD0, 1, &[1; 8], &[2; 8], &[0x41, 0x00], 1200)),
        ("retry from a client", long(0xF0, 1, &[1; 8], &[2; 8], &[], 1200)),
        ("another version, full size", long(0xC0, 0xFF00_001D, &[1; 8], &[2; 8], &[], 1200)),
        ("another version, small", long(0xC0, 0xFF00_001D, &[1; 8], &[2; 8], &[], 600)),
        ("version 0", long(0xC0, 0, &[1; 8], &[2; 8], &[], 1200)),
    ];
    let seen = arrivals(&cases);
    assert_eq!(
        seen,
        [
            "short, our tag",
            "short, greased",
            "initial",
            "initial, 20-byte id",
            "initial, token",
            "initial, 8-byte length",
            "handshake to our id",
            "another version, full size",
        ]
    );
}

#[test]
fn a_kept_reset_key_gives_the_same_ids_after_a_restart() {
    let key = [7u8; 32];
    let cid = TaggedConnectionIdGenerator::from_reset_key(&key).generate_cid();
    let restarted = TaggedConnectionIdGenerator::from_reset_key(&key);
    assert_eq!(&cid[..4], &restarted.tag().0);
    assert!(restarted.validate(&cid).is_ok());
    assert!(TaggedConnectionIdGenerator::from_reset_key(&[8; 32]).validate(&cid).is_err());
}
