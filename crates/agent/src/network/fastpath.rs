//! The fast path for plain pod-to-pod packets: a small eBPF program on the tc ingress hook of
//! every pod's host end and of every uplink to a host-gw peer. It routes a packet itself (the
//! kernel's FIB lookup, MACs from its neighbour table, TTL decremented) and hands it straight to
//! the egress device, so such packets skip the host's IP layer and its netfilter hooks.
//!
//! Why: with NAT in our table the kernel runs seven netfilter hooks per forwarded packet on each
//! host (defrag, raw, conntrack in, dnat, forward, snat, confirm), even for untracked packets.
//! That was most of what host-gw lost against the bare link (the README's networking section has
//! the figures); the same packets through this program measure like pods with no rules at all.
//!
//! It is only an accelerator: everything it does not take (returns `TC_ACT_UNSPEC`) goes the
//! way it went without it, through our nftables table, which stays the authority. It takes
//! exactly the packets the table would leave untracked and accept:
//! - unicast to this host's MAC, IPv4 without options, not a fragment, TTL above 1, TCP or UDP;
//! - both addresses in the fleet, the destination not this host's bridge address, both ports
//!   below the range NATed connections use ([`super::notrack::RESERVED_PORTS`]);
//! - both addresses in the address map with a compose network in common (one bit per network:
//!   a pod of the project's `default` network and of `back` has two bits), the map made from the
//!   same [`Isolation`] the forward chain is made from, so a pair the chain would drop is never
//!   taken here (an address missing from the map, or more than 64 networks, only means the
//!   slower path decides);
//! - the FIB gives a resolved neighbour on an allowed egress device (the bridge, or an uplink
//!   of a host-gw route whose MTU is not under the bridge's: never the mesh's L3 device, and
//!   never a link where the kernel would have had to tell the pod its packets are too big);
//! - and one packet in 256, at random, is not taken: only the kernel's path has a stale
//!   neighbour entry verified again, so a peer whose MAC changed is found out. A pod's address
//!   given to a new pod has its old entry deleted when the new pod's link is made.
//!
//! ```text
//! pod ─veth─▶ [tc ingress: fast path] ──redirect──▶ uplink ─▶ [tc ingress: fast path] ──redirect──▶ bridge ─▶ pod
//! ```
//!
//! The program is ours, generated here instruction by instruction (there is no BPF toolchain on
//! the hosts or the build machine), and loaded through `bpf(2)`; the filters are set over
//! rtnetlink. `bpf_fib_lookup` is a GPL-only helper, so the program (only it) is declared
//! `Dual MIT/GPL` to the kernel. A kernel that refuses it (no BPF, a locked-down host, Linux
//! before 5.1 and its 32-bit jumps) leaves every packet to the nftables path, with one line in
//! the agent's log, a warning for `up` and `off` in `hosts`.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use super::isolation::Isolation;
use crate::proto::net::Ipv4Net;

// ---- the instruction set (include/uapi/linux/bpf.h) ----

/// One eBPF instruction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Insn {
    pub code: u8,
    pub dst: u8,
    pub src: u8,
    pub off: i16,
    pub imm: i32,
}

impl Insn {
    /// Its 8 bytes as the kernel reads them (host byte order).
    pub fn encode(&self) -> [u8; 8] {
        let mut b = [0u8; 8];
        b[0] = self.code;
        b[1] = if cfg!(target_endian = "little") {
            (self.src << 4) | (self.dst & 0xf)
        } else {
            (self.dst << 4) | (self.src & 0xf)
        };
        b[2..4].copy_from_slice(&self.off.to_ne_bytes());
        b[4..8].copy_from_slice(&self.imm.to_ne_bytes());
        b
    }
}

const R0: u8 = 0;
const R1: u8 = 1;
const R2: u8 = 2;
const R3: u8 = 3;
const R4: u8 = 4;
const R6: u8 = 6;
const R7: u8 = 7;
const FP: u8 = 10;

const CLASS_LDX: u8 = 0x01;
const CLASS_ST: u8 = 0x02;
const CLASS_STX: u8 = 0x03;
const CLASS_ALU: u8 = 0x04;
const CLASS_JMP: u8 = 0x05;
const CLASS_JMP32: u8 = 0x06;
const CLASS_ALU64: u8 = 0x07;
const MODE_MEM: u8 = 0x60;
const SRC_X: u8 = 0x08;
const OP_ADD: u8 = 0x00;
const OP_AND: u8 = 0x50;
const OP_MOV: u8 = 0xb0;
const OP_END: u8 = 0xd0;
const TO_BE: u8 = 0x08;

/// Access sizes.
#[derive(Debug, Clone, Copy)]
enum Size {
    B = 0x10,
    H = 0x08,
    W = 0x00,
    Dw = 0x18,
}

/// Jump conditions.
#[derive(Debug, Clone, Copy)]
enum Jmp {
    Eq = 0x10,
    Ge = 0x30,
    Ne = 0x50,
    Gt = 0x20,
    Lt = 0xa0,
    Le = 0xb0,
}

/// A label: a place in the program that jumps name before it is known.
#[derive(Debug, Clone, Copy)]
struct Label(usize);

/// Writes instructions; jumps to labels are resolved by [`Asm::finish`].
#[derive(Default)]
struct Asm {
    insns: Vec<Insn>,
    labels: Vec<Option<usize>>,
    fixups: Vec<(usize, Label)>,
}

impl Asm {
    fn emit(&mut self, code: u8, dst: u8, src: u8, off: i16, imm: i32) {
        self.insns.push(Insn {
            code,
            dst,
            src,
            off,
            imm,
        });
    }
    fn label(&mut self) -> Label {
        self.labels.push(None);
        Label(self.labels.len() - 1)
    }
    fn bind(&mut self, l: Label) {
        self.labels[l.0] = Some(self.insns.len());
    }
    fn mov64(&mut self, dst: u8, src: u8) {
        self.emit(CLASS_ALU64 | OP_MOV | SRC_X, dst, src, 0, 0);
    }
    fn mov64_imm(&mut self, dst: u8, imm: i32) {
        self.emit(CLASS_ALU64 | OP_MOV, dst, 0, 0, imm);
    }
    fn add64_imm(&mut self, dst: u8, imm: i32) {
        self.emit(CLASS_ALU64 | OP_ADD, dst, 0, 0, imm);
    }
    fn and64(&mut self, dst: u8, src: u8) {
        self.emit(CLASS_ALU64 | OP_AND | SRC_X, dst, src, 0, 0);
    }
    /// 32-bit AND with an immediate (no sign extension into the upper half: it is cleared).
    fn and32_imm(&mut self, dst: u8, imm: i32) {
        self.emit(CLASS_ALU | OP_AND, dst, 0, 0, imm);
    }
    /// The low 16 bits from network to host byte order.
    fn be16(&mut self, dst: u8) {
        self.emit(CLASS_ALU | OP_END | TO_BE, dst, 0, 0, 16);
    }
    fn ldx(&mut self, size: Size, dst: u8, src: u8, off: i16) {
        self.emit(CLASS_LDX | MODE_MEM | size as u8, dst, src, off, 0);
    }
    fn stx(&mut self, size: Size, dst: u8, off: i16, src: u8) {
        self.emit(CLASS_STX | MODE_MEM | size as u8, dst, src, off, 0);
    }
    fn st_imm(&mut self, size: Size, dst: u8, off: i16, imm: i32) {
        self.emit(CLASS_ST | MODE_MEM | size as u8, dst, 0, off, imm);
    }
    fn jump(&mut self, code: u8, dst: u8, src: u8, imm: i32, to: Label) {
        self.fixups.push((self.insns.len(), to));
        self.emit(code, dst, src, 0, imm);
    }
    fn jmp_imm(&mut self, op: Jmp, dst: u8, imm: i32, to: Label) {
        self.jump(CLASS_JMP | op as u8, dst, 0, imm, to);
    }
    fn jmp_reg(&mut self, op: Jmp, dst: u8, src: u8, to: Label) {
        self.jump(CLASS_JMP | op as u8 | SRC_X, dst, src, 0, to);
    }
    /// Compares the low 32 bits of `dst` with `imm`.
    fn jmp32_imm(&mut self, op: Jmp, dst: u8, imm: i32, to: Label) {
        self.jump(CLASS_JMP32 | op as u8, dst, 0, imm, to);
    }
    fn call(&mut self, helper: i32) {
        self.emit(CLASS_JMP | 0x80, 0, 0, 0, helper);
    }
    fn exit(&mut self) {
        self.emit(CLASS_JMP | 0x90, 0, 0, 0, 0);
    }
    /// `dst = map fd` as the verifier wants it (a 16-byte load of a pseudo map fd).
    fn ld_map(&mut self, dst: u8, fd: i32) {
        self.emit(0x18, dst, BPF_PSEUDO_MAP_FD, 0, fd);
        self.emit(0, 0, 0, 0, 0);
    }
    fn finish(mut self) -> Vec<Insn> {
        for (at, label) in std::mem::take(&mut self.fixups) {
            let target = self.labels[label.0].expect("every label used is bound");
            let off = target as i64 - at as i64 - 1;
            self.insns[at].off = i16::try_from(off).expect("programs here are short");
        }
        self.insns
    }
}

const BPF_PSEUDO_MAP_FD: u8 = 1;
const HELPER_MAP_LOOKUP: i32 = 1;
const HELPER_GET_PRANDOM_U32: i32 = 7;
const HELPER_REDIRECT: i32 = 23;
const HELPER_FIB_LOOKUP: i32 = 69;
/// One packet in this many is left to the kernel's path (a power of two).
const KERNEL_SHARE: i32 = 256;
const TC_ACT_UNSPEC: i32 = -1;
const PACKET_HOST: i32 = 0;
const PACKET_OTHERHOST: i32 = 3;

// `struct __sk_buff` fields.
const SKB_PKT_TYPE: i16 = 4;
const SKB_MARK: i16 = 8;
const SKB_IFINDEX: i16 = 40;
const SKB_DATA: i16 = 76;
const SKB_DATA_END: i16 = 80;

// `struct bpf_fib_lookup` (64 bytes) on the stack at FP - 64.
const FIB: i16 = -64;
const FIB_FAMILY: i16 = FIB;
const FIB_L4: i16 = FIB + 1;
const FIB_SPORT: i16 = FIB + 2;
const FIB_DPORT: i16 = FIB + 4;
const FIB_IFINDEX: i16 = FIB + 8;
const FIB_TOS: i16 = FIB + 12;
const FIB_SRC: i16 = FIB + 16;
const FIB_DST: i16 = FIB + 32;
const FIB_MARK: i16 = FIB + 52;
const FIB_SMAC: i16 = FIB + 52;
const FIB_DMAC: i16 = FIB + 58;

/// What the program is built from besides its maps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Params {
    pub fleet: Ipv4Net,
    /// This host's bridge address: packets to it are the host's own.
    pub gateway: Ipv4Addr,
}

/// A value as the program sees the same bytes loaded from a packet (host byte order).
fn ne32(bytes: [u8; 4]) -> i32 {
    i32::from_ne_bytes(bytes)
}
fn ne16(bytes: [u8; 2]) -> i32 {
    i32::from(u16::from_ne_bytes(bytes))
}

/// The program. `addresses` maps a pod address (4 bytes, network order) to its networks' bits
/// (u64); `egress` holds the interface indexes (u32) a packet may be sent out of.
///
/// `from_pods`: for pods' host ends, where a frame to the bridge's MAC is "for another host"
/// (the port has a MAC of its own) and is taken too; on an uplink only frames to the link's own
/// MAC are (on a shared segment, frames for other hosts are theirs to route).
pub fn program(p: &Params, addresses: i32, egress: i32, from_pods: bool) -> Vec<Insn> {
    let mut a = Asm::default();
    let pass = a.label();
    a.mov64(R6, R1);
    // Unicast only (never broadcast or multicast).
    a.ldx(Size::W, R0, R6, SKB_PKT_TYPE);
    if from_pods {
        let unicast = a.label();
        a.jmp_imm(Jmp::Eq, R0, PACKET_HOST, unicast);
        a.jmp_imm(Jmp::Ne, R0, PACKET_OTHERHOST, pass);
        a.bind(unicast);
    } else {
        a.jmp_imm(Jmp::Ne, R0, PACKET_HOST, pass);
    }
    a.ldx(Size::W, R2, R6, SKB_DATA);
    a.ldx(Size::W, R3, R6, SKB_DATA_END);
    a.mov64(R4, R2);
    a.add64_imm(R4, 38); // Ethernet 14 + IPv4 20 + both ports
    a.jmp_reg(Jmp::Gt, R4, R3, pass);
    a.ldx(Size::H, R0, R2, 12);
    a.jmp_imm(Jmp::Ne, R0, ne16([0x08, 0x00]), pass); // ETH_P_IP
    a.ldx(Size::B, R0, R2, 14);
    a.jmp_imm(Jmp::Ne, R0, 0x45, pass); // version 4, no options
    a.ldx(Size::H, R0, R2, 20);
    a.and32_imm(R0, ne16([0x3f, 0xff])); // more fragments, fragment offset
    a.jmp_imm(Jmp::Ne, R0, 0, pass);
    a.ldx(Size::B, R0, R2, 22);
    // TTL 1: the kernel answers those.
    a.jmp_imm(Jmp::Le, R0, 1, pass);
    let l4 = a.label();
    a.ldx(Size::B, R0, R2, 23);
    a.jmp_imm(Jmp::Eq, R0, libc::IPPROTO_TCP, l4);
    a.jmp_imm(Jmp::Ne, R0, libc::IPPROTO_UDP, pass);
    a.bind(l4);
    // Checks first, so the host's own traffic (an uplink sees all of it) leaves early.
    let reserved = i32::from(super::notrack::RESERVED_PORTS.0);
    for at in [34, 36] {
        a.ldx(Size::H, R0, R2, at);
        a.be16(R0);
        a.jmp_imm(Jmp::Ge, R0, reserved, pass);
    }
    let prefix = u32::from(p.fleet.prefix());
    let mask = Ipv4Addr::from(u32::MAX.checked_shl(32 - prefix).unwrap_or(0)).octets();
    let net = p.fleet.network().octets();
    for at in [26, 30] {
        a.ldx(Size::W, R0, R2, at);
        a.and32_imm(R0, ne32(mask));
        a.jmp32_imm(Jmp::Ne, R0, ne32(net), pass);
    }
    a.ldx(Size::W, R0, R2, 30);
    a.jmp32_imm(Jmp::Eq, R0, ne32(p.gateway.octets()), pass);
    // The FIB lookup's arguments, zeroed first (the verifier wants all 64 bytes written). No
    // `tot_len`: the kernel then checks the packet itself against the egress MTU, which is right
    // for GSO packets too (their header's length is the whole unsegmented packet's).
    for i in 0..8 {
        a.st_imm(Size::Dw, FP, FIB + 8 * i, 0);
    }
    a.st_imm(Size::B, FP, FIB_FAMILY, libc::AF_INET);
    for (size, at, to) in [
        (Size::B, 23, FIB_L4),
        (Size::H, 34, FIB_SPORT),
        (Size::H, 36, FIB_DPORT),
        (Size::B, 15, FIB_TOS),
        (Size::W, 26, FIB_SRC),
        (Size::W, 30, FIB_DST),
    ] {
        a.ldx(size, R0, R2, at);
        a.stx(size, FP, to, R0);
    }
    a.ldx(Size::W, R0, R6, SKB_IFINDEX);
    a.stx(Size::W, FP, FIB_IFINDEX, R0);
    a.ldx(Size::W, R0, R6, SKB_MARK);
    a.stx(Size::W, FP, FIB_MARK, R0);
    // A compose network in common.
    a.ld_map(R1, addresses);
    a.mov64(R2, FP);
    a.add64_imm(R2, i32::from(FIB_SRC));
    a.call(HELPER_MAP_LOOKUP);
    a.jmp_imm(Jmp::Eq, R0, 0, pass);
    a.ldx(Size::Dw, R7, R0, 0);
    a.ld_map(R1, addresses);
    a.mov64(R2, FP);
    a.add64_imm(R2, i32::from(FIB_DST));
    a.call(HELPER_MAP_LOOKUP);
    a.jmp_imm(Jmp::Eq, R0, 0, pass);
    a.ldx(Size::Dw, R0, R0, 0);
    a.and64(R0, R7);
    a.jmp_imm(Jmp::Eq, R0, 0, pass);
    // One packet in 256, at random, goes the kernel's way all the same: only the kernel's path
    // has neighbour entries verified again once stale (a peer host whose MAC changed with its
    // address kept fails its probe there, and the fast path stops using the entry).
    a.call(HELPER_GET_PRANDOM_U32);
    a.and32_imm(R0, KERNEL_SHARE - 1);
    a.jmp_imm(Jmp::Eq, R0, 0, pass);
    // Route it: success means a resolved neighbour (else the kernel's path resolves it).
    a.mov64(R1, R6);
    a.mov64(R2, FP);
    a.add64_imm(R2, i32::from(FIB));
    a.mov64_imm(R3, 64);
    a.mov64_imm(R4, 0);
    a.call(HELPER_FIB_LOOKUP);
    a.jmp_imm(Jmp::Ne, R0, 0, pass);
    a.ld_map(R1, egress);
    a.mov64(R2, FP);
    a.add64_imm(R2, i32::from(FIB_IFINDEX));
    a.call(HELPER_MAP_LOOKUP);
    a.jmp_imm(Jmp::Eq, R0, 0, pass);
    // Helper calls invalidate packet pointers: load and check them again.
    a.ldx(Size::W, R2, R6, SKB_DATA);
    a.ldx(Size::W, R3, R6, SKB_DATA_END);
    a.mov64(R4, R2);
    a.add64_imm(R4, 34);
    a.jmp_reg(Jmp::Gt, R4, R3, pass);
    // TTL - 1, and the header checksum updated as the kernel's ip_decrease_ttl does.
    a.ldx(Size::B, R0, R2, 22);
    a.add64_imm(R0, -1);
    a.stx(Size::B, R2, 22, R0);
    a.ldx(Size::H, R0, R2, 24);
    a.add64_imm(R0, ne16([0x01, 0x00]));
    let stored = a.label();
    a.jmp_imm(Jmp::Lt, R0, 0xffff, stored);
    a.add64_imm(R0, 1);
    a.bind(stored);
    a.stx(Size::H, R2, 24, R0);
    for i in 0..3 {
        a.ldx(Size::H, R0, FP, FIB_DMAC + 2 * i);
        a.stx(Size::H, R2, 2 * i, R0);
        a.ldx(Size::H, R0, FP, FIB_SMAC + 2 * i);
        a.stx(Size::H, R2, 6 + 2 * i, R0);
    }
    a.ldx(Size::W, R1, FP, FIB_IFINDEX);
    a.mov64_imm(R2, 0);
    a.call(HELPER_REDIRECT);
    a.exit();
    a.bind(pass);
    a.mov64_imm(R0, TC_ACT_UNSPEC);
    a.exit();
    a.finish()
}

/// Each address of `isolation` and the bits of its networks: network `i` (in the order of
/// `isolation.networks`) is bit `i`; networks past the 64th get no bit (their pairs go the
/// slower way). Addresses with no bit are left out.
pub fn address_bits(isolation: &Isolation) -> BTreeMap<Ipv4Addr, u64> {
    let mut bits: BTreeMap<Ipv4Addr, u64> = BTreeMap::new();
    for (i, members) in isolation.networks.values().enumerate().take(64) {
        for addr in members {
            *bits.entry(*addr).or_default() |= 1 << i;
        }
    }
    bits
}

// ---- bpf(2) ----

const BPF_MAP_CREATE: libc::c_int = 0;
const BPF_MAP_UPDATE_ELEM: libc::c_int = 2;
const BPF_PROG_LOAD: libc::c_int = 5;
const BPF_MAP_TYPE_HASH: u32 = 1;
const BPF_PROG_TYPE_SCHED_CLS: u32 = 3;

/// `union bpf_attr`, as wide as any command here needs and zeroed (the kernel requires unused
/// bytes to be zero).
#[repr(C, align(8))]
struct Attr([u8; 128]);

impl Attr {
    fn new() -> Attr {
        Attr([0; 128])
    }
    fn u32(&mut self, at: usize, v: u32) -> &mut Self {
        self.0[at..at + 4].copy_from_slice(&v.to_ne_bytes());
        self
    }
    fn u64(&mut self, at: usize, v: u64) -> &mut Self {
        self.0[at..at + 8].copy_from_slice(&v.to_ne_bytes());
        self
    }
    fn name(&mut self, at: usize, name: &str) -> &mut Self {
        let n = name.len().min(15);
        self.0[at..at + n].copy_from_slice(&name.as_bytes()[..n]);
        self
    }
    fn call(&mut self, cmd: libc::c_int) -> io::Result<libc::c_long> {
        // SAFETY: bpf(2) reads (and for some commands writes) the attribute union we own, of
        // the size we pass; pointers inside it point at buffers alive for the call.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                cmd,
                self.0.as_mut_ptr(),
                std::mem::size_of::<Attr>(),
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(rc)
    }
    fn fd(&mut self, cmd: libc::c_int) -> io::Result<OwnedFd> {
        let fd = self.call(cmd)?;
        // SAFETY: the kernel just returned this new descriptor to us.
        Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
    }
}

/// A hash map in the kernel.
#[derive(Debug)]
pub struct Map {
    fd: OwnedFd,
    key: usize,
    value: usize,
}

impl Map {
    /// A map of up to `entries` entries, allocated as they are added.
    fn create(name: &str, key: usize, value: usize, entries: usize) -> io::Result<Map> {
        let fd = Attr::new()
            .u32(0, BPF_MAP_TYPE_HASH)
            .u32(4, key as u32)
            .u32(8, value as u32)
            .u32(12, entries as u32)
            .u32(16, BPF_F_NO_PREALLOC)
            .name(28, name)
            .fd(BPF_MAP_CREATE)?;
        Ok(Map { fd, key, value })
    }

    fn put(&self, key: &[u8], value: &[u8]) -> io::Result<()> {
        assert_eq!((key.len(), value.len()), (self.key, self.value));
        Attr::new()
            .u32(0, self.fd.as_raw_fd() as u32)
            .u64(8, key.as_ptr() as u64)
            .u64(16, value.as_ptr() as u64)
            .call(BPF_MAP_UPDATE_ELEM)
            .map(drop)
    }
}

/// The program loaded, with the maps it reads.
#[derive(Debug)]
pub struct Loaded {
    /// For pods' host ends.
    pub pods: OwnedFd,
    /// For uplinks.
    pub uplinks: OwnedFd,
    pub addresses: Map,
    pub egress: Map,
}

/// The name the filters and the program carry (`tc filter show` prints it).
pub const NAME: &str = "compose_fleet";
/// The program's license as the kernel reads it: the GPL-only FIB helper needs a GPL-compatible
/// one, and this program alone (generated bytecode, not the agent) is offered under it.
const LICENSE: &[u8] = b"Dual MIT/GPL\0";

impl Loaded {
    /// Empty maps and both programs reading them, for `params`.
    pub fn new(params: &Params) -> io::Result<Loaded> {
        let addresses = Map::create("cf_addresses", 4, 8, ADDRESS_ENTRIES)?;
        let egress = Map::create("cf_egress", 4, 4, EGRESS_ENTRIES)?;
        Ok(Loaded {
            pods: load_program(params, &addresses, &egress, true)?,
            uplinks: load_program(params, &addresses, &egress, false)?,
            addresses,
            egress,
        })
    }
}

/// Loads the program reading `addresses` and `egress`; the verifier's reasons if it refuses.
fn load_program(
    params: &Params,
    addresses: &Map,
    egress: &Map,
    from_pods: bool,
) -> io::Result<OwnedFd> {
    let (a, e) = (addresses.fd.as_raw_fd(), egress.fd.as_raw_fd());
    let code: Vec<u8> = program(params, a, e, from_pods)
        .iter()
        .flat_map(Insn::encode)
        .collect();
    let load = |log: &mut [u8]| {
        Attr::new()
            .u32(0, BPF_PROG_TYPE_SCHED_CLS)
            .u32(4, (code.len() / 8) as u32)
            .u64(8, code.as_ptr() as u64)
            .u64(16, LICENSE.as_ptr() as u64)
            .u32(24, u32::from(!log.is_empty()))
            .u32(28, log.len() as u32)
            .u64(
                32,
                if log.is_empty() {
                    0
                } else {
                    log.as_mut_ptr() as u64
                },
            )
            .name(48, NAME)
            .fd(BPF_PROG_LOAD)
    };
    let prog = match load(&mut []) {
        Ok(fd) => fd,
        Err(e)
            if e.raw_os_error() == Some(libc::EACCES) || e.raw_os_error() == Some(libc::EINVAL) =>
        {
            // The verifier refused it: load again for its reasons.
            let mut log = vec![0u8; 1 << 16];
            let _ = load(&mut log);
            let end = log.iter().position(|b| *b == 0).unwrap_or(log.len());
            let text = String::from_utf8_lossy(&log[..end]);
            let tail: Vec<&str> = text.lines().rev().take(8).collect();
            return Err(io::Error::other(format!(
                "the kernel refused the fast-path program ({e}): {}",
                tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
            )));
        }
        Err(e) => return Err(e),
    };
    Ok(prog)
}

// ---- keeping the kernel in step ----

const BPF_MAP_DELETE_ELEM: libc::c_int = 3;
/// Entries allocated as added, not all up front (the address map is sized for a whole fleet).
const BPF_F_NO_PREALLOC: u32 = 1;
/// Room for every address of the largest fleet range (a /16) and for egress devices.
const ADDRESS_ENTRIES: usize = 1 << 16;
const EGRESS_ENTRIES: usize = 256;

impl Map {
    fn delete(&self, key: &[u8]) -> io::Result<()> {
        Attr::new()
            .u32(0, self.fd.as_raw_fd() as u32)
            .u64(8, key.as_ptr() as u64)
            .call(BPF_MAP_DELETE_ELEM)
            .map(drop)
    }
}

/// What the fast path of one network namespace is, as this process made it.
#[derive(Debug, Default)]
struct State {
    /// What the fast path should do: kept for [`refresh`] when only devices change.
    want: Option<(Params, BTreeMap<Ipv4Addr, u64>)>,
    loaded: Option<(Params, Loaded)>,
    bits: BTreeMap<Ipv4Addr, u64>,
    egress: BTreeSet<u32>,
    /// Interfaces whose ingress filter runs `loaded`'s program.
    attached: BTreeSet<u32>,
    /// The uplinks as last read (egress, ingress): read again when our routes change.
    uplinks: Option<(BTreeSet<u32>, BTreeSet<u32>)>,
    /// Why the fast path is off here (the kernel refused the program, or a filter): said once
    /// in the log and in [`off`], not tried again by this process.
    refused: Option<String>,
}

/// Per network namespace (by its cookie): one agent serves one host, but the tests run several
/// hosts' networks in one process.
static STATES: std::sync::Mutex<BTreeMap<u64, State>> = std::sync::Mutex::new(BTreeMap::new());

/// The calling thread's network namespace's cookie, which (unlike its inode) is never given to
/// another namespace (Linux 5.14+); the inode where the kernel lacks it.
fn netns_id() -> io::Result<u64> {
    const SO_NETNS_COOKIE: libc::c_int = 71;
    // SAFETY: a socket we close below; getsockopt writes at most `len` bytes into `cookie`.
    unsafe {
        let fd = libc::socket(libc::AF_UNIX, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd >= 0 {
            let mut cookie: u64 = 0;
            let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
            let rc = libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                SO_NETNS_COOKIE,
                (&mut cookie as *mut u64).cast(),
                &mut len,
            );
            libc::close(fd);
            if rc == 0 {
                return Ok(cookie);
            }
        }
    }
    use std::os::unix::fs::MetadataExt;
    Ok(std::fs::metadata("/proc/thread-self/ns/net")?.ino() | 1 << 63)
}

/// The devices of this network namespace the fast path uses.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Devices {
    /// Pods' host ends: packets from pods enter here.
    pub pods: BTreeSet<u32>,
    /// Ethernet links our host-gw routes leave by: packets to other hosts' pods leave here.
    pub uplinks: BTreeSet<u32>,
    /// The uplinks packets from other hosts' pods are taken from on their way in: those that
    /// are not bridges (on a bridge, `br_netfilter` may already have tracked and un-NATed a
    /// packet when the device's ingress hook sees it; such a packet must go on the kernel's way).
    pub ingress: BTreeSet<u32>,
    /// Our bridge: packets to this host's pods leave by it.
    pub bridge: Option<u32>,
}

/// Brings the fast path of this network namespace to `want` (`None`: remove it). Never fails a
/// deploy: the nftables path carries everything the fast path does not, so a kernel that
/// refuses the program gets one line in the agent's log and the slower path.
pub fn sync(want: Option<(Params, &Isolation)>, devices: impl FnOnce(bool) -> io::Result<Devices>) {
    let Ok(id) = netns_id() else { return };
    let mut states = STATES.lock().unwrap_or_else(|p| p.into_inner());
    let state = states.entry(id).or_default();
    let Some((params, isolation)) = want else {
        // The uplinks too: filters an earlier agent process attached are ours to take away.
        let uplinks = devices(true).map(|d| d.ingress).unwrap_or_default();
        state.attached.extend(uplinks);
        if let Err(e) = remove(state) {
            eprintln!("network fast path: {e}");
        }
        states.remove(&id);
        return;
    };
    state.want = Some((params, address_bits(isolation)));
    run(state, devices, false);
}

/// Applies what [`sync`] last asked for again, with the uplinks read again (a route to a
/// host-gw peer appeared or went). Nothing when the fast path is off here.
pub fn refresh(devices: impl FnOnce(bool) -> io::Result<Devices>) {
    let Ok(id) = netns_id() else { return };
    let mut states = STATES.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(state) = states.get_mut(&id) {
        run(state, devices, true);
    }
}

/// `devices(with_uplinks)`: the devices, uplinks included when asked.
fn run(state: &mut State, devices: impl FnOnce(bool) -> io::Result<Devices>, reread: bool) {
    if state.refused.is_some() {
        return;
    }
    let Some((params, bits)) = state.want.clone() else {
        return;
    };
    let fresh = reread || state.uplinks.is_none();
    let result = devices(fresh).and_then(|mut d| {
        match &state.uplinks {
            Some((egress, ingress)) if !fresh => {
                d.uplinks = egress.clone();
                d.ingress = ingress.clone();
            }
            _ => state.uplinks = Some((d.uplinks.clone(), d.ingress.clone())),
        }
        apply(state, params, bits, &d)
    });
    if let Err(e) = result {
        eprintln!("network fast path: {e}; pod-to-pod packets take the nftables path");
        let _ = remove(state);
        state.refused = Some(e.to_string());
    }
}

/// What the kernel shows of the fast path here: `None` without pods, `on` when a pod's link runs
/// our filter, `off` when it does not. Read from the kernel, so any process can tell (the
/// agent that answers `Hello` is not always the one that set the filters).
pub fn status() -> Option<String> {
    use rtnetlink::packet_route::link::{LinkAttribute, LinkMessage};
    let mut sock = super::kernel::route_socket().ok()?;
    let links = sock
        .dump(
            RouteNetlinkMessage::GetLink(LinkMessage::default()),
            "listing the host's links",
        )
        .ok()?;
    let pod = links.into_iter().find_map(|m| match m {
        RouteNetlinkMessage::NewLink(link) => link
            .attributes
            .iter()
            .any(|a| matches!(a, LinkAttribute::IfName(n) if n.starts_with("cfp")))
            .then_some(link.header.index),
        _ => None,
    })?;
    let dump = tc_message(
        pod,
        TcHandle::UNSPEC,
        TcHandle {
            major: 0xffff,
            minor: TcHandle::MIN_INGRESS,
        },
        0,
    );
    let ours = sock
        .dump(
            RouteNetlinkMessage::GetTrafficFilter(dump),
            "listing a pod link's filters",
        )
        .unwrap_or_default()
        .into_iter()
        .any(|m| match m {
            RouteNetlinkMessage::NewTrafficFilter(f) => f.attributes.iter().any(|a| match a {
                TcAttribute::Options(options) => options.iter().any(
                    |o| matches!(o, TcOption::Bpf(TcFilterBpfOption::ProgName(n)) if n == NAME),
                ),
                _ => false,
            }),
            _ => false,
        });
    Some(if ours { "on" } else { "off" }.to_string())
}

/// Why this network namespace has no fast path although pods asked for one, if it failed.
pub fn off() -> Option<String> {
    let id = netns_id().ok()?;
    let states = STATES.lock().unwrap_or_else(|p| p.into_inner());
    states.get(&id)?.refused.clone()
}

fn apply(
    state: &mut State,
    params: Params,
    bits: BTreeMap<Ipv4Addr, u64>,
    d: &Devices,
) -> io::Result<()> {
    let egress: BTreeSet<u32> = d.uplinks.iter().copied().chain(d.bridge).collect();
    if state.loaded.as_ref().map(|(p, _)| *p) != Some(params) {
        state.loaded = Some((params, Loaded::new(&params)?));
        state.bits.clear();
        state.egress.clear();
        state.attached.clear();
    }
    let Some((_, loaded)) = &state.loaded else {
        return Ok(());
    };
    // Maps first, then filters: a newly attached device sees a complete map.
    for (addr, b) in &bits {
        if state.bits.get(addr) != Some(b) {
            loaded.addresses.put(&addr.octets(), &b.to_ne_bytes())?;
        }
    }
    for addr in state.bits.keys().filter(|a| !bits.contains_key(a)) {
        let _ = loaded.addresses.delete(&addr.octets());
    }
    state.bits = bits;
    for index in egress.difference(&state.egress) {
        loaded
            .egress
            .put(&index.to_ne_bytes(), &1u32.to_ne_bytes())?;
    }
    for index in state.egress.difference(&egress) {
        let _ = loaded.egress.delete(&index.to_ne_bytes());
    }
    state.egress = egress;
    let mut sock = super::kernel::route_socket()?;
    let on: BTreeSet<u32> = d.pods.union(&d.ingress).copied().collect();
    for index in on.difference(&state.attached) {
        let prog = if d.pods.contains(index) {
            &loaded.pods
        } else {
            &loaded.uplinks
        };
        attach(&mut sock, *index, prog.as_raw_fd())?;
    }
    // An uplink no host-gw route uses any more is let go; pods' links went with their filters.
    for index in state.attached.difference(&on) {
        if !d.pods.contains(index) {
            let _ = detach(&mut sock, *index);
        }
    }
    state.attached = on;
    Ok(())
}

fn remove(state: &mut State) -> io::Result<()> {
    state.loaded = None;
    if !state.attached.is_empty() {
        let mut sock = super::kernel::route_socket()?;
        for index in std::mem::take(&mut state.attached) {
            let _ = detach(&mut sock, index);
        }
    }
    state.bits.clear();
    state.egress.clear();
    Ok(())
}

// ---- tc over rtnetlink ----

use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL, NLM_F_REPLACE};
use rtnetlink::packet_route::tc::{
    TcAttribute, TcBpfFlags, TcFilterBpf, TcFilterBpfOption, TcHandle, TcHeader, TcMessage,
    TcOption,
};
use rtnetlink::packet_route::RouteNetlinkMessage;

/// Our filter's priority on an ingress hook (after any a host's own tools set with the usual
/// small numbers) and its handle.
const PRIORITY: u16 = 0xc213;
const HANDLE: u32 = 0xcf1;
/// `htons(ETH_P_ALL)`: the filter sees every protocol (the program checks for IPv4).
const ALL_PROTOCOLS: u16 = (libc::ETH_P_ALL as u16).to_be();

fn tc_message(index: u32, handle: TcHandle, parent: TcHandle, info: u32) -> TcMessage {
    let header = TcHeader {
        index: index as i32,
        handle,
        parent,
        info,
        ..Default::default()
    };
    TcMessage::from_parts(header, Vec::new())
}

fn filter(index: u32) -> TcMessage {
    let mut m = tc_message(
        index,
        TcHandle::from(HANDLE),
        TcHandle {
            major: 0xffff,
            minor: TcHandle::MIN_INGRESS,
        },
        (u32::from(PRIORITY) << 16) | u32::from(ALL_PROTOCOLS),
    );
    m.attributes
        .push(TcAttribute::Kind(TcFilterBpf::KIND.to_string()));
    m
}

/// Runs `prog` on link `index`'s ingress (a `clsact` qdisc added if it has none), replacing
/// what our filter ran there before.
fn attach(sock: &mut super::netlink::Netlink, index: u32, prog: i32) -> io::Result<()> {
    let mut qdisc = tc_message(
        index,
        TcHandle {
            major: 0xffff,
            minor: 0,
        },
        TcHandle::CLSACT,
        0,
    );
    qdisc.attributes.push(TcAttribute::Kind("clsact".into()));
    match sock.request(
        RouteNetlinkMessage::NewQueueDiscipline(qdisc),
        NLM_F_CREATE | NLM_F_EXCL,
        &format!("adding a clsact qdisc to link {index}"),
    ) {
        Err(e) if super::netlink::is_errno(&e, libc::EEXIST) => {}
        r => r?,
    }
    let mut f = filter(index);
    f.attributes.push(TcAttribute::Options(vec![
        TcOption::Bpf(TcFilterBpfOption::ProgFd(prog as u32)),
        TcOption::Bpf(TcFilterBpfOption::ProgName(NAME.into())),
        TcOption::Bpf(TcFilterBpfOption::Flags(TcBpfFlags::DirectAction)),
    ]));
    sock.request(
        RouteNetlinkMessage::NewTrafficFilter(f),
        NLM_F_CREATE | NLM_F_REPLACE,
        &format!("attaching the fast path to link {index}"),
    )
}

/// Removes our filter from link `index`, and its `clsact` qdisc when no filter is left on it
/// (a link of the host's own is left as it was before us).
fn detach(sock: &mut super::netlink::Netlink, index: u32) -> io::Result<()> {
    match sock.request(
        RouteNetlinkMessage::DelTrafficFilter(filter(index)),
        0,
        &format!("removing the fast path from link {index}"),
    ) {
        Err(e)
            if super::netlink::is_errno(&e, libc::ENOENT)
                || super::netlink::is_errno(&e, libc::ENODEV) =>
        {
            return Ok(())
        }
        r => r?,
    }
    let mut others = 0;
    for minor in [TcHandle::MIN_INGRESS, TcHandle::MIN_EGRESS] {
        let dump = tc_message(
            index,
            TcHandle::UNSPEC,
            TcHandle {
                major: 0xffff,
                minor,
            },
            0,
        );
        others += sock
            .dump(
                RouteNetlinkMessage::GetTrafficFilter(dump),
                &format!("listing link {index}'s filters"),
            )?
            .len();
    }
    if others == 0 {
        let qdisc = tc_message(
            index,
            TcHandle {
                major: 0xffff,
                minor: 0,
            },
            TcHandle::CLSACT,
            0,
        );
        match sock.request(
            RouteNetlinkMessage::DelQueueDiscipline(qdisc),
            0,
            &format!("removing link {index}'s clsact qdisc"),
        ) {
            Err(e)
                if super::netlink::is_errno(&e, libc::ENOENT)
                    || super::netlink::is_errno(&e, libc::EINVAL) => {}
            r => r?,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> Params {
        Params {
            fleet: "10.213.0.0/16".parse().expect("cidr"),
            gateway: Ipv4Addr::new(10, 213, 1, 1),
        }
    }

    #[test]
    fn every_jump_lands_inside_the_program_and_it_ends_in_exits() {
        let p = program(&params(), 3, 4, true);
        let n = p.len() as i64;
        for (i, insn) in p.iter().enumerate() {
            let class = insn.code & 0x07;
            let op = insn.code & 0xf0;
            if (class == CLASS_JMP || class == CLASS_JMP32) && op != 0x80 && op != 0x90 {
                let target = i as i64 + 1 + i64::from(insn.off);
                assert!((0..n).contains(&target), "insn {i} jumps to {target}");
                assert!(
                    target > i as i64,
                    "insn {i} jumps backwards (the verifier refuses loops)"
                );
            }
        }
        assert_eq!(p.last().map(|i| i.code), Some(0x95));
        assert!(p.len() < 200, "{} instructions", p.len());
    }

    #[test]
    fn constants_are_the_bytes_a_packet_holds() {
        let p = program(&params(), 3, 4, true);
        let fleet_check = p
            .iter()
            .filter(|i| i.code == (CLASS_JMP32 | Jmp::Ne as u8))
            .map(|i| i.imm.to_ne_bytes())
            .collect::<Vec<_>>();
        assert_eq!(fleet_check, vec![[10, 213, 0, 0]; 2]);
        let gateway = p
            .iter()
            .find(|i| i.code == (CLASS_JMP32 | Jmp::Eq as u8))
            .map(|i| i.imm.to_ne_bytes());
        assert_eq!(gateway, Some([10, 213, 1, 1]));
        // Both map loads carry the right descriptors as pseudo map fds.
        let maps: Vec<(u8, i32)> = p
            .iter()
            .filter(|i| i.code == 0x18)
            .map(|i| (i.src, i.imm))
            .collect();
        assert_eq!(maps, vec![(1, 3), (1, 3), (1, 4)]);
    }

    #[test]
    fn instructions_encode_as_the_kernel_reads_them() {
        // r6 = r1
        let i = Insn {
            code: 0xbf,
            dst: 6,
            src: 1,
            off: 0,
            imm: 0,
        };
        assert_eq!(i.encode(), [0xbf, 0x16, 0, 0, 0, 0, 0, 0]);
        // if r0 != 0 goto +5
        let j = Insn {
            code: 0x55,
            dst: 0,
            src: 0,
            off: 5,
            imm: 0x45,
        };
        assert_eq!(j.encode(), [0x55, 0x00, 5, 0, 0x45, 0, 0, 0]);
    }

    #[test]
    fn addresses_get_one_bit_per_network_and_pairs_share_a_bit_only_on_a_common_network() {
        let mut iso = Isolation::default();
        let a = Ipv4Addr::new(10, 213, 1, 2);
        let b = Ipv4Addr::new(10, 213, 2, 2);
        let c = Ipv4Addr::new(10, 213, 1, 3);
        iso.networks.insert("p/back".into(), [a, b].into());
        iso.networks.insert("p/front".into(), [a, c].into());
        iso.networks.insert("q/default".into(), [c].into());
        let bits = address_bits(&iso);
        assert_eq!(bits[&a], 0b011);
        assert_eq!(bits[&b], 0b001);
        assert_eq!(bits[&c], 0b110);
        assert_ne!(bits[&a] & bits[&b], 0);
        assert_ne!(bits[&a] & bits[&c], 0);
        assert_eq!(bits[&b] & bits[&c], 0);
    }

    #[test]
    fn the_kernels_verifier_accepts_the_program() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: loading a BPF program needs root");
            return;
        }
        let loaded = Loaded::new(&params()).expect("the kernel loads both");
        let addr = Ipv4Addr::new(10, 213, 1, 2);
        loaded
            .addresses
            .put(&addr.octets(), &1u64.to_ne_bytes())
            .expect("an address");
        loaded
            .egress
            .put(&7u32.to_ne_bytes(), &1u32.to_ne_bytes())
            .expect("a device");
        loaded.addresses.delete(&addr.octets()).expect("deleted");
    }

    #[test]
    fn a_fast_path_that_fails_is_off_with_its_reason_until_the_last_pod_goes() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: a network namespace of its own needs root");
            return;
        }
        // In a namespace of its own: the state is per namespace, other tests share this one.
        std::thread::spawn(|| {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare");
            assert_eq!(off(), None);
            let isolation = Isolation::default();
            let refused = || Err(io::Error::other("no BPF here"));
            sync(Some((params(), &isolation)), |_| refused());
            assert_eq!(off().as_deref(), Some("no BPF here"));
            // Not tried again by this process: later syncs leave it off, saying why.
            sync(Some((params(), &isolation)), |_| Ok(Devices::default()));
            assert_eq!(off().as_deref(), Some("no BPF here"));
            sync(None, |_| Ok(Devices::default()));
            assert_eq!(off(), None);
            // Without pods the kernel shows no fast path either way.
            assert_eq!(status(), None);
        })
        .join()
        .expect("the test thread");
    }

    #[test]
    fn networks_past_the_64th_get_no_bit() {
        let mut iso = Isolation::default();
        for i in 0..70u8 {
            iso.networks.insert(
                format!("p/n{i:03}"),
                [Ipv4Addr::new(10, 213, 1, i + 2)].into(),
            );
        }
        let bits = address_bits(&iso);
        assert_eq!(bits.len(), 64);
        assert!(!bits.contains_key(&Ipv4Addr::new(10, 213, 1, 66)));
    }
}
