//! Destinations the XDP program must never take over.
//!
//! With the default "any server", a SYN to `127.0.0.1:110` or to one of the router's own
//! addresses would make the daemon connect there from inside the router: a subscriber
//! could reach services that listen only on loopback or on the router. So loopback,
//! link-local, multicast, reserved ranges and every address of the router are excluded
//! (the kernel then handles those frames as it would without us), and so are private
//! ranges unless `--intercept-private` says otherwise. A `--servers` prefix lying inside
//! an excluded range lifts that exclusion: an operator who names it means it.

use std::net::IpAddr;

use ipnet::IpNet;

/// Always excluded: not a mail server anywhere.
const ALWAYS: &[&str] = &[
    "0.0.0.0/8",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "224.0.0.0/4",
    "240.0.0.0/4",
    "::/128",
    "::1/128",
    "::ffff:0:0/96",
    "fe80::/10",
    "ff00::/8",
];

/// Excluded unless private destinations are intercepted (RFC 1918, RFC 6598, RFC 4193).
const PRIVATE: &[&str] = &[
    "10.0.0.0/8",
    "100.64.0.0/10",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "fc00::/7",
];

/// The prefixes to put in `EXCLUDED_V4`/`EXCLUDED_V6`.
pub fn excluded(own: &[IpAddr], servers: &[IpNet], intercept_private: bool) -> Vec<IpNet> {
    let fixed = ALWAYS
        .iter()
        .chain(if intercept_private { &[][..] } else { PRIVATE })
        .map(|p| p.parse::<IpNet>().expect("a valid built-in prefix"));
    let mut out: Vec<IpNet> = fixed
        .chain(own.iter().map(|&ip| IpNet::from(ip)))
        .filter(|excluded| !servers.iter().any(|named| excluded.contains(named)))
        .collect();
    out.sort();
    out.dedup();
    out
}

/// Every address configured on any interface of this network namespace.
pub fn own_addresses() -> Vec<IpAddr> {
    let mut out = Vec::new();
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list we free below with freeifaddrs.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        tracing::warn!(err = %std::io::Error::last_os_error(), "getifaddrs: the router's own addresses are not excluded");
        return out;
    }
    let mut cursor = head;
    while !cursor.is_null() {
        // SAFETY: a node of the list getifaddrs returned, alive until freeifaddrs.
        let ifa = unsafe { &*cursor };
        cursor = ifa.ifa_next;
        if ifa.ifa_addr.is_null() {
            continue;
        }
        // SAFETY: ifa_addr points at a sockaddr whose family says which type it is.
        match i32::from(unsafe { (*ifa.ifa_addr).sa_family }) {
            libc::AF_INET => {
                // SAFETY: family AF_INET: a sockaddr_in.
                let sin = unsafe { &*ifa.ifa_addr.cast::<libc::sockaddr_in>() };
                out.push(IpAddr::from(
                    u32::from_be(sin.sin_addr.s_addr).to_be_bytes(),
                ));
            }
            libc::AF_INET6 => {
                // SAFETY: family AF_INET6: a sockaddr_in6.
                let sin6 = unsafe { &*ifa.ifa_addr.cast::<libc::sockaddr_in6>() };
                out.push(IpAddr::from(sin6.sin6_addr.s6_addr));
            }
            _ => {}
        }
    }
    // SAFETY: `head` came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(head) };
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|p| p.parse().unwrap()).collect()
    }

    fn covers(list: &[IpNet], ip: &str) -> bool {
        let ip: IpAddr = ip.parse().unwrap();
        list.iter().any(|net| net.contains(&ip))
    }

    #[test]
    fn loopback_link_local_multicast_and_the_router_are_excluded() {
        let own: Vec<IpAddr> = vec![
            "198.51.100.1".parse().unwrap(),
            "2001:db8:1::1".parse().unwrap(),
        ];
        let list = excluded(&own, &[], false);
        for ip in [
            "127.0.0.1",
            "169.254.1.1",
            "224.0.0.1",
            "255.255.255.255",
            "198.51.100.1",
            "10.1.2.3",
            "192.168.0.1",
            "::1",
            "fe80::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "fd00::1",
            "2001:db8:1::1",
        ] {
            assert!(covers(&list, ip), "{ip}");
        }
        // The test networks' mail servers stay interceptable.
        for ip in ["203.0.113.2", "198.51.100.2", "2001:db8:2::2"] {
            assert!(!covers(&list, ip), "{ip}");
        }
    }

    #[test]
    fn private_ranges_are_a_choice_and_named_servers_win() {
        assert!(!covers(&excluded(&[], &[], true), "10.1.2.3"));
        assert!(covers(&excluded(&[], &[], true), "127.0.0.1"));
        let named = excluded(&[], &nets(&["10.1.0.0/16", "127.0.0.1/32"]), false);
        assert!(!covers(&named, "10.1.2.3"));
        assert!(!covers(&named, "127.0.0.1"));
        // Naming "everything" does not name loopback.
        assert!(covers(
            &excluded(&[], &nets(&["0.0.0.0/0"]), false),
            "127.0.0.1"
        ));
    }

    #[test]
    fn finds_the_loopback_address_of_this_namespace() {
        let own = own_addresses();
        assert!(own.iter().any(|ip| ip.is_loopback()), "{own:?}");
    }
}
