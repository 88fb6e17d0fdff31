//! A classic-BPF filter on the coordinator's UDP socket that drops, inside the kernel, datagrams
//! that cannot be QUIC for this endpoint, and the connection-id generator it relies on.
//!
//! A volumetric flood of junk UDP costs a server mostly by being delivered: the kernel queues
//! each datagram on the socket, copies it out, and quinn parses its header before dropping it.
//! On two cores shared with a fleet, 50,000 junk datagrams a second cost the honest rounds
//! 11 % of their rate; aimed at a socket that drops them on arrival, 2 %. The filter runs
//! where that drop happens (before the socket's queue) and lets through only:
//!
//! - short-header packets whose destination connection id starts with
//!   this endpoint's [tag](ConnectionTag): every id the endpoint hands out carries it, and a
//!   restarted endpoint with the same reset key has the same tag, so its predecessor's peers
//!   still reach it and get their stateless reset;
//! - version-1 long-header packets to a tagged id of [`CID_LEN`] bytes (Handshake, and the
//!   Initials a client sends once it knows the server's id);
//! - a client's first Initial: a datagram of at least 1,200 bytes (RFC 9000 §14.1), a
//!   destination id of 8 to 20 bytes (§7.2), a source id of at most 20, a token that fits, and
//!   a packet length that ends the packet where the datagram ends (a client pads its first
//!   Initial to fill the datagram, or coalesces it with 0-RTT, which Flotilla does not offer);
//! - other versions in datagrams of at least 1,200 bytes (quinn answers them with a version
//!   negotiation), never version 0.
//!
//! 0-RTT packets (Flotilla does not offer 0-RTT) and Retry packets from clients are dropped.
//! The fixed bit is not checked: quinn's peers grease it (RFC 9287), and do in about half of
//! their packets.
//!
//! What it does not stop: a peer that has seen one of the endpoint's ids (any peer that
//! starts a handshake does) can shape packets that pass, and a well-formed Initial passes by
//! design; those reach quinn, which drops packets to unknown ids at its header check
//! (validated against the keyed half of the id) and answers new connections with a Retry
//! under load. A flood from many addresses at line rate is stopped before the host, by a
//! per-source rate limit (an nftables meter) or upstream filtering.

use quinn_proto::{ConnectionId, ConnectionIdGenerator, HashedConnectionIdGenerator, InvalidCid};

/// Bytes of an id the endpoint hands out: the 4-byte tag, then quinn's keyed 8-byte id.
pub const CID_LEN: usize = TAG_LEN + 8;
/// Bytes of the tag at the start of every id.
const TAG_LEN: usize = 4;
/// Fewest bytes of a UDP payload carrying a client's Initial.
const MIN_INITIAL_DATAGRAM: u32 = 1200;
/// The UDP header before the QUIC packet in what a socket filter sees.
const UDP_HEADER: u32 = 8;

/// The 4 bytes every connection id of an endpoint starts with, derived from its reset key so
/// that a restarted endpoint recognises its predecessor's ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionTag([u8; TAG_LEN]);

impl ConnectionTag {
    fn word(self) -> u32 {
        u32::from_be_bytes(self.0)
    }
}

/// quinn's keyed connection ids ([`HashedConnectionIdGenerator`]) behind the endpoint's tag;
/// an id without the tag, or whose keyed part does not check, is refused.
pub struct TaggedConnectionIdGenerator {
    tag: ConnectionTag,
    inner: HashedConnectionIdGenerator,
}

impl TaggedConnectionIdGenerator {
    /// Ids starting with `tag`, keyed with `key`.
    pub fn new(tag: ConnectionTag, key: u64) -> Self {
        Self { tag, inner: HashedConnectionIdGenerator::from_key(key) }
    }

    /// The ids of an endpoint whose stateless-reset key is `reset_key`: of its SHA-256, the
    /// first 8 bytes key the ids and the next 4 are the tag, so a restarted endpoint with the
    /// same key makes and recognises the same ids.
    pub fn from_reset_key(reset_key: &[u8; 32]) -> Self {
        use sha2::Digest;
        let digest: [u8; 32] = sha2::Sha256::digest(reset_key).into();
        let [k0, k1, k2, k3, k4, k5, k6, k7, t0, t1, t2, t3, ..] = digest;
        Self::new(ConnectionTag([t0, t1, t2, t3]), u64::from_le_bytes([k0, k1, k2, k3, k4, k5, k6, k7]))
    }

    /// The tag every id starts with.
    pub fn tag(&self) -> ConnectionTag {
        self.tag
    }
}

impl ConnectionIdGenerator for TaggedConnectionIdGenerator {
    fn generate_cid(&mut self) -> ConnectionId {
        let inner = self.inner.generate_cid();
        let mut bytes = [0u8; CID_LEN];
        bytes[..TAG_LEN].copy_from_slice(&self.tag.0);
        bytes[TAG_LEN..].copy_from_slice(&inner);
        ConnectionId::new(&bytes)
    }

    fn validate(&self, cid: &ConnectionId) -> Result<(), InvalidCid> {
        if cid.len() != CID_LEN || cid[..TAG_LEN] != self.tag.0 {
            return Err(InvalidCid);
        }
        self.inner.validate(&ConnectionId::new(&cid[TAG_LEN..]))
    }

    fn cid_len(&self) -> usize {
        CID_LEN
    }

    fn cid_lifetime(&self) -> Option<std::time::Duration> {
        None
    }
}

/// One classic-BPF instruction, as `struct sock_filter` holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Instruction {
    /// Operation.
    pub code: u16,
    /// Instructions skipped when a jump's test holds.
    pub jt: u8,
    /// Instructions skipped when it does not.
    pub jf: u8,
    /// Operand.
    pub k: u32,
}

// Opcodes of linux/filter.h.
const LD: u16 = 0x00;
const LDX: u16 = 0x01;
const ST: u16 = 0x02;
const ALU: u16 = 0x04;
const JMP: u16 = 0x05;
const RET: u16 = 0x06;
const MISC: u16 = 0x07;
const W: u16 = 0x00;
const H: u16 = 0x08;
const B: u16 = 0x10;
const ABS: u16 = 0x20;
const IND: u16 = 0x40;
const MEM: u16 = 0x60;
const LEN: u16 = 0x80;
const IMM: u16 = 0x00;
const ADD: u16 = 0x00;
const AND: u16 = 0x50;
const RSH: u16 = 0x70;
const JA: u16 = 0x00;
const JEQ: u16 = 0x10;
const JGT: u16 = 0x20;
const JGE: u16 = 0x30;
const JSET: u16 = 0x40;
const K: u16 = 0x00;
const X: u16 = 0x08;
const TAX: u16 = 0x00;

/// Scratch memory slots.
const M_LEN: u32 = 0;
const M_BYTE: u32 = 1;
const M_VALUE: u32 = 2;
const M_SIZE: u32 = 3;
const M_TEMP: u32 = 4;

/// What a jump lands on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Label {
    Accept,
    Drop,
    Short,
    Long,
    Version1,
    OtherVersion,
    Initial,
    Local(u32),
}

#[derive(Debug, Clone, Copy)]
enum Item {
    Op(u16, u32),
    Jump(u16, u32, Label, Label),
    Goto(Label),
    Mark(Label),
}

/// A program under construction, with symbolic jump targets.
#[derive(Debug, Default)]
struct Assembler {
    items: Vec<Item>,
    locals: u32,
}

impl Assembler {
    fn op(&mut self, code: u16, k: u32) -> &mut Self {
        self.items.push(Item::Op(code, k));
        self
    }

    fn jump(&mut self, code: u16, k: u32, yes: Label, no: Label) -> &mut Self {
        self.items.push(Item::Jump(JMP | code | K, k, yes, no));
        self
    }

    fn jump_x(&mut self, code: u16, yes: Label, no: Label) -> &mut Self {
        self.items.push(Item::Jump(JMP | code | X, 0, yes, no));
        self
    }

    fn goto(&mut self, to: Label) -> &mut Self {
        self.items.push(Item::Goto(to));
        self
    }

    fn mark(&mut self, at: Label) -> &mut Self {
        self.items.push(Item::Mark(at));
        self
    }

    fn local(&mut self) -> Label {
        self.locals += 1;
        Label::Local(self.locals)
    }

    /// Decodes the QUIC variable-length integer at offset X into `M_VALUE` and its size into
    /// `M_SIZE`; drops values above 65,535 (nothing longer fits in a datagram), so that offset
    /// sums cannot wrap.
    fn varint(&mut self) -> &mut Self {
        let (one, two, four, done) = (self.local(), self.local(), self.local(), self.local());
        let (next, after_high) = (self.local(), self.local());
        self.op(LD | B | IND, 0).op(ST, M_BYTE).op(ALU | RSH | K, 6);
        self.jump(JEQ, 0, one, next).mark(next);
        let next = self.local();
        self.jump(JEQ, 1, two, next).mark(next);
        self.jump(JEQ, 2, four, after_high).mark(after_high);
        // Eight bytes: the high word must be zero.
        let low = self.local();
        self.op(LD | W | IND, 0).op(ALU | AND | K, 0x3fff_ffff).jump(JEQ, 0, low, Label::Drop).mark(low);
        self.op(LD | W | IND, 4).op(ST, M_VALUE).op(LD | IMM, 8).op(ST, M_SIZE).goto(done);
        self.mark(one).op(LD | MEM, M_BYTE).op(ALU | AND | K, 0x3f).op(ST, M_VALUE);
        self.op(LD | IMM, 1).op(ST, M_SIZE).goto(done);
        self.mark(two).op(LD | H | IND, 0).op(ALU | AND | K, 0x3fff).op(ST, M_VALUE);
        self.op(LD | IMM, 2).op(ST, M_SIZE).goto(done);
        self.mark(four).op(LD | W | IND, 0).op(ALU | AND | K, 0x3fff_ffff).op(ST, M_VALUE);
        self.op(LD | IMM, 4).op(ST, M_SIZE);
        let fits = self.local();
        self.mark(done).op(LD | MEM, M_VALUE).jump(JGT, 0xffff, Label::Drop, fits).mark(fits);
        self
    }

    /// A = X + `M_SIZE` + `M_VALUE`: the offset after the integer just decoded and the bytes
    /// it counts.
    fn skip_counted(&mut self) -> &mut Self {
        self.op(LD | MEM, M_VALUE).op(ALU | ADD | X, 0).op(ST, M_TEMP);
        self.op(LDX | MEM, M_SIZE).op(LD | MEM, M_TEMP).op(ALU | ADD | X, 0)
    }

    /// Resolves the labels into instructions; `None` if a jump is too far for its 8 bits.
    fn finish(&self) -> Option<Vec<Instruction>> {
        let mut at = std::collections::HashMap::new();
        let mut position = 0usize;
        for item in &self.items {
            match item {
                Item::Mark(label) => {
                    at.insert(*label, position);
                }
                _ => position += 1,
            }
        }
        let mut out = Vec::with_capacity(position);
        for item in &self.items {
            let here = out.len();
            let offset = |label: &Label| at.get(label).and_then(|to| to.checked_sub(here + 1));
            match item {
                Item::Mark(_) => continue,
                Item::Op(code, k) => out.push(Instruction { code: *code, jt: 0, jf: 0, k: *k }),
                Item::Jump(code, k, yes, no) => out.push(Instruction {
                    code: *code,
                    jt: u8::try_from(offset(yes)?).ok()?,
                    jf: u8::try_from(offset(no)?).ok()?,
                    k: *k,
                }),
                Item::Goto(to) => {
                    out.push(Instruction { code: JMP | JA, jt: 0, jf: 0, k: u32::try_from(offset(to)?).ok()? })
                }
            }
        }
        Some(out)
    }
}

/// The filter program for an endpoint whose ids carry `tag` (see the module's text).
pub fn program(tag: ConnectionTag) -> std::io::Result<Vec<Instruction>> {
    let mut a = Assembler::default();
    let q = UDP_HEADER;
    a.op(LD | W | LEN, 0).op(ST, M_LEN);
    a.op(LD | B | ABS, q).jump(JSET, 0x80, Label::Long, Label::Short);

    // Short header: the tag (not the fixed bit: peers grease it, RFC 9287).
    a.mark(Label::Short).op(LD | W | ABS, q + 1).jump(JEQ, tag.word(), Label::Accept, Label::Drop);

    // Long header: version 1, or another non-zero version in a full-sized datagram.
    a.mark(Label::Long).op(LD | W | ABS, q + 1).jump(JEQ, 1, Label::Version1, Label::OtherVersion);
    let nonzero = a.local();
    a.mark(Label::OtherVersion).jump(JEQ, 0, Label::Drop, nonzero).mark(nonzero);
    a.op(LD | MEM, M_LEN).jump(JGE, q + MIN_INITIAL_DATAGRAM, Label::Accept, Label::Drop);

    // Version 1: to one of our ids, or a client's first Initial.
    let (our_length, not_ours) = (a.local(), a.local());
    a.mark(Label::Version1).op(LD | B | ABS, q + 5).jump(JEQ, CID_LEN as u32, our_length, not_ours);
    a.mark(our_length).op(LD | W | ABS, q + 6).jump(JEQ, tag.word(), Label::Accept, not_ours);
    a.mark(not_ours);
    a.op(LD | B | ABS, q).op(ALU | AND | K, 0x30).jump(JEQ, 0, Label::Initial, Label::Drop);

    // A first Initial: its size, its ids' lengths, then its token and packet lengths.
    let (big, short_enough, long_enough, scid_fits) = (a.local(), a.local(), a.local(), a.local());
    a.mark(Label::Initial).op(LD | MEM, M_LEN).jump(JGE, q + MIN_INITIAL_DATAGRAM, big, Label::Drop).mark(big);
    a.op(LD | B | ABS, q + 5).jump(JGT, 20, Label::Drop, short_enough).mark(short_enough);
    a.jump(JGE, 8, long_enough, Label::Drop).mark(long_enough);
    // X = offset of the source id's length.
    a.op(ALU | ADD | K, q + 6).op(MISC | TAX, 0);
    a.op(LD | B | IND, 0).jump(JGT, 20, Label::Drop, scid_fits).mark(scid_fits);
    // X = offset of the token's length.
    a.op(ALU | ADD | X, 0).op(ALU | ADD | K, 1).op(MISC | TAX, 0);
    a.varint().skip_counted().op(MISC | TAX, 0);
    // X = offset of the packet's length: the packet must end where the datagram does (a first
    // Initial is padded to fill it; there is no 0-RTT packet to coalesce it with).
    a.varint().skip_counted();
    a.op(ST, M_TEMP).op(LDX | MEM, M_LEN).op(LD | MEM, M_TEMP).jump_x(JEQ, Label::Accept, Label::Drop);

    a.mark(Label::Accept).op(RET | K, u32::MAX);
    a.mark(Label::Drop).op(RET | K, 0);
    a.finish().ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "a socket-filter jump is too far"))
}

/// Attaches [`program`] to `socket`: datagrams it refuses never reach the socket's queue.
#[cfg(any(target_os = "linux", target_os = "android"))]
pub fn attach(socket: &socket2::Socket, tag: ConnectionTag) -> std::io::Result<()> {
    let filter: Vec<socket2::SockFilter> =
        program(tag)?.iter().map(|i| socket2::SockFilter::new(i.code, i.jt, i.jf, i.k)).collect();
    socket.attach_filter(&filter)
}

/// Socket filters are Linux's; elsewhere every datagram reaches quinn.
#[cfg(not(any(target_os = "linux", target_os = "android")))]
pub fn attach(_socket: &socket2::Socket, _tag: ConnectionTag) -> std::io::Result<()> {
    Err(std::io::Error::new(std::io::ErrorKind::Unsupported, "socket filters are Linux's"))
}

#[cfg(test)]
mod tests;
