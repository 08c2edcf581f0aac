//! Bans below accept (docs/PROTOCOL.md §11, revision 3): a classic BPF socket filter on
//! each listener that drops the SYNs of banned addresses before the kernel makes a socket
//! for them, so a banned client costs the server no handshake, no accept, no answer and no
//! close; its TCP retries the SYN with backoff and gives up.
//!
//! # The program
//!
//! A socket filter on a TCP socket runs with the packet's data at the TCP header, and the
//! IP header reachable at `SKF_NET_OFF`. Accepted sockets inherit their listener's filter,
//! so the program lets through at once every segment that is not a bare SYN (flags & (SYN
//! | ACK) == SYN): an established connection pays three instructions per segment. Then the
//! source address is compared with each ban; each comparison is followed by its own
//! `ret 0`, so no jump spans more than the 255 instructions classic BPF can express:
//!
//! ```text
//!   ldb [13]; and #0x12; jeq #0x02, 1, 0; ret #-1      not a bare SYN: keep
//!   ld [net + 12]                                      IPv4 source
//!   jeq #a1, 0, 1; ret #0                               banned: drop
//!   ...
//!   ret #-1                                            keep
//! ```
//!
//! IPv6 compares the four words of the source address, nine instructions per ban.
//!
//! # Bounds
//!
//! At most [`MAX_INSNS`] instructions (about 500 IPv4 bans, 110 IPv6 ones): every
//! accepted socket holds a reference to its listener's filter and is charged its size
//! against `net.core.optmem_max` (20 KiB on older kernels), and a bare SYN from an
//! address not banned walks the whole list. The bans beyond it are refused at accept with
//! EventError 16, as before. Rebuilding is a `setsockopt(SO_ATTACH_FILTER)`, which swaps
//! the listener's filter atomically; with no ban the filter is detached.

use std::net::IpAddr;

use libc::sock_filter;

/// Most instructions in a filter (the kernel's own bound is 4,096).
pub const MAX_INSNS: usize = 1024;

/// `ret` value that keeps the whole packet.
const KEEP: u32 = u32::MAX;
/// TCP header flags.
const SYN: u32 = 0x02;
const ACK: u32 = 0x10;

fn stmt(code: u32, k: u32) -> sock_filter {
    sock_filter {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jump(code: u32, k: u32, jt: u8, jf: u8) -> sock_filter {
    sock_filter {
        code: code as u16,
        jt,
        jf,
        k,
    }
}

/// `ld [SKF_NET_OFF + off]`: a word of the IP header.
fn load_net_word(off: i32) -> sock_filter {
    stmt(
        libc::BPF_LD | libc::BPF_W | libc::BPF_ABS,
        (libc::SKF_NET_OFF + off) as u32,
    )
}

/// A filter for a listener of this family (`v6`) dropping the SYNs of `bans` (those of
/// the other family are skipped), and how many bans it holds: the first ones that fit in
/// [`MAX_INSNS`]. `None` when no ban of the family is given: the listener needs no filter.
pub fn program(bans: &[IpAddr], v6: bool) -> Option<(Vec<sock_filter>, usize)> {
    let mut p = vec![
        stmt(libc::BPF_LD | libc::BPF_B | libc::BPF_ABS, 13),
        stmt(libc::BPF_ALU | libc::BPF_AND | libc::BPF_K, SYN | ACK),
        jump(libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K, SYN, 1, 0),
        stmt(libc::BPF_RET | libc::BPF_K, KEEP),
    ];
    let jeq = libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K;
    let drop = stmt(libc::BPF_RET | libc::BPF_K, 0);
    let mut held = 0;
    if !v6 {
        p.push(load_net_word(12));
        for ip in bans {
            let IpAddr::V4(a) = ip.to_canonical() else {
                continue;
            };
            if p.len() + 3 > MAX_INSNS {
                break;
            }
            p.push(jump(jeq, u32::from(a), 0, 1));
            p.push(drop);
            held += 1;
        }
    } else {
        for ip in bans {
            let IpAddr::V6(a) = ip else {
                continue;
            };
            if a.to_ipv4_mapped().is_some() {
                continue;
            }
            if p.len() + 10 > MAX_INSNS {
                break;
            }
            for (w, c) in (0u8..).zip(a.octets().chunks_exact(4)) {
                p.push(load_net_word(8 + 4 * i32::from(w)));
                // A mismatch skips the rest of this ban's block and its `ret 0`.
                let word = u32::from_be_bytes([c[0], c[1], c[2], c[3]]);
                p.push(jump(jeq, word, 0, 7 - 2 * w));
            }
            p.push(drop);
            held += 1;
        }
    }
    p.push(stmt(libc::BPF_RET | libc::BPF_K, KEEP));
    (held > 0).then_some((p, held))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs the subset of classic BPF the programs use over a packet made of an IP header
    /// (`net`) and a TCP header (`data`), as the kernel presents them to a socket filter.
    fn run(p: &[sock_filter], net: &[u8], data: &[u8]) -> u32 {
        let load = |k: u32, size: usize| -> u32 {
            let (buf, off) = if (k as i32) < 0 {
                (net, (k as i32 - libc::SKF_NET_OFF) as usize)
            } else {
                (data, k as usize)
            };
            buf[off..off + size]
                .iter()
                .fold(0u32, |acc, b| acc << 8 | u32::from(*b))
        };
        let (mut a, mut pc, mut steps) = (0u32, 0usize, 0);
        loop {
            steps += 1;
            assert!(steps <= p.len(), "a classic BPF program only jumps forward");
            let i = p[pc];
            let code = u32::from(i.code);
            pc += 1;
            match code {
                c if c == libc::BPF_LD | libc::BPF_B | libc::BPF_ABS => a = load(i.k, 1),
                c if c == libc::BPF_LD | libc::BPF_W | libc::BPF_ABS => a = load(i.k, 4),
                c if c == libc::BPF_ALU | libc::BPF_AND | libc::BPF_K => a &= i.k,
                c if c == libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K => {
                    pc += usize::from(if a == i.k { i.jt } else { i.jf });
                }
                c if c == libc::BPF_RET | libc::BPF_K => return i.k,
                c => panic!("instruction {c:#x} not in the subset"),
            }
        }
    }

    fn packet(src: IpAddr, flags: u8) -> (Vec<u8>, Vec<u8>) {
        let net = match src {
            IpAddr::V4(a) => {
                let mut h = vec![0x45u8; 20];
                h[12..16].copy_from_slice(&a.octets());
                h
            }
            IpAddr::V6(a) => {
                let mut h = vec![0x60u8; 40];
                h[8..24].copy_from_slice(&a.octets());
                h
            }
        };
        let mut tcp = vec![0u8; 20];
        tcp[13] = flags;
        (net, tcp)
    }

    fn verdict(p: &[sock_filter], src: &str, flags: u8) -> u32 {
        let (net, tcp) = packet(src.parse().unwrap(), flags);
        run(p, &net, &tcp)
    }

    fn ips(list: &[&str]) -> Vec<IpAddr> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn drops_only_the_bare_syns_of_banned_ipv4_addresses() {
        let (p, held) = program(&ips(&["10.0.0.1", "127.0.0.9", "::1"]), false).unwrap();
        assert_eq!(held, 2);
        assert_eq!(verdict(&p, "10.0.0.1", 0x02), 0);
        assert_eq!(verdict(&p, "127.0.0.9", 0x02), 0);
        assert_eq!(verdict(&p, "127.0.0.8", 0x02), KEEP);
        // An established connection's segments, and a SYN-ACK, are kept.
        assert_eq!(verdict(&p, "10.0.0.1", 0x10), KEEP);
        assert_eq!(verdict(&p, "10.0.0.1", 0x18), KEEP);
        assert_eq!(verdict(&p, "10.0.0.1", 0x12), KEEP);
        // With other flags beside it (ECN), a SYN is still a SYN.
        assert_eq!(verdict(&p, "10.0.0.1", 0xc2), 0);
    }

    #[test]
    fn drops_only_the_bare_syns_of_banned_ipv6_addresses() {
        let (p, held) = program(
            &ips(&["2001:db8::1", "10.0.0.1", "::ffff:10.0.0.2", "::1"]),
            true,
        )
        .unwrap();
        assert_eq!(held, 2);
        assert_eq!(verdict(&p, "2001:db8::1", 0x02), 0);
        assert_eq!(verdict(&p, "::1", 0x02), 0);
        // Differing in any one word: kept.
        for other in [
            "2001:db9::1",
            "2001:db8:1::1",
            "2001:db8::1:0:0:1",
            "2001:db8::2",
        ] {
            assert_eq!(verdict(&p, other, 0x02), KEEP, "{other}");
        }
        assert_eq!(verdict(&p, "2001:db8::1", 0x10), KEEP);
    }

    #[test]
    fn no_filter_without_a_ban_of_the_family() {
        assert!(program(&[], false).is_none());
        assert!(program(&ips(&["::1"]), false).is_none());
        assert!(program(&ips(&["10.0.0.1", "::ffff:10.0.0.2"]), true).is_none());
    }

    #[test]
    fn holds_the_first_bans_that_fit_and_no_more() {
        let many: Vec<IpAddr> = (0..2000u32)
            .map(|i| IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i)))
            .collect();
        let (p, held) = program(&many, false).unwrap();
        assert!(p.len() <= MAX_INSNS);
        assert!(held > 400 && held < 2000, "{held}");
        assert_eq!(verdict(&p, "10.0.0.0", 0x02), 0);
        let last_in = std::net::Ipv4Addr::from(0x0a00_0000 + held as u32 - 1).to_string();
        let first_out = std::net::Ipv4Addr::from(0x0a00_0000 + held as u32).to_string();
        assert_eq!(verdict(&p, &last_in, 0x02), 0);
        assert_eq!(verdict(&p, &first_out, 0x02), KEEP);

        let many6: Vec<IpAddr> = (0..500u16)
            .map(|i| IpAddr::V6(std::net::Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, i)))
            .collect();
        let (p, held) = program(&many6, true).unwrap();
        assert!(p.len() <= MAX_INSNS);
        assert!(held > 100 && held < 500, "{held}");
        assert_eq!(verdict(&p, &format!("2001:db8::{:x}", held - 1), 0x02), 0);
        assert_eq!(verdict(&p, &format!("2001:db8::{:x}", held), 0x02), KEEP);
    }
}
