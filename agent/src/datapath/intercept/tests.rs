use super::*;

fn rule(s: &str) -> InterceptRule {
    s.parse().unwrap_or_else(|e| panic!("{e}"))
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
}

#[test]
fn parses_every_form_in_both_families() {
    assert_eq!(
        rule("198.19.0.7:8000"),
        InterceptRule {
            target: Target::Net {
                addr: ip("198.19.0.7"),
                prefix_len: 32
            },
            port: 8000
        }
    );
    assert_eq!(
        rule("198.19.0.0/16:8000").target,
        Target::Net {
            addr: ip("198.19.0.0"),
            prefix_len: 16
        }
    );
    assert_eq!(rule("*:8000").target, Target::Any);
    assert_eq!(
        rule("[2001:2::7]:8000").target,
        Target::Net {
            addr: ip("2001:2::7"),
            prefix_len: 128
        }
    );
    assert_eq!(
        rule("[2001:2::/64]:8000").target,
        Target::Net {
            addr: ip("2001:2::"),
            prefix_len: 64
        }
    );
    // IPv4-mapped is IPv4; `[::/0]` is the same trie entry as `*`: the same rules.
    assert_eq!(rule("[::ffff:198.19.0.7]:8000"), rule("198.19.0.7:8000"));
    assert_eq!(rule("[::/0]:8000").target, Target::Any);
}

#[test]
fn displays_what_it_parses() {
    for s in [
        "198.19.0.7:8000",
        "198.19.0.0/16:80",
        "*:8000",
        "[2001:2::7]:8000",
        "[2001:2::/64]:8000",
    ] {
        assert_eq!(rule(s).to_string(), s);
    }
}

#[test]
fn rejects_bad_rules_with_a_reason() {
    for (s, reason) in [
        ("198.19.0.7", "missing :PORT"),
        ("198.19.0.7:http", "port is not a number"),
        ("198.19.0.7:0", "port 0 cannot be connected to"),
        ("198.19.0.1/16:8000", "address has bits set past the prefix"),
        ("198.19.0.0/33:8000", "prefix longer than the address"),
        ("example.com:8000", "not an IPv4 address"),
        ("2001:2::7:8000", "IPv6 addresses go in brackets"),
        ("[2001:2::7:8000", "unclosed [ in an IPv6 rule"),
        ("[198.19.0.7]:8000", "not an IPv6 address"),
        (
            "[2001:2::1/64]:8000",
            "address has bits set past the prefix",
        ),
        ("[2001:2::/129]:8000", "prefix longer than the address"),
    ] {
        let e = s.parse::<InterceptRule>().expect_err(s);
        assert_eq!(e.reason, reason, "{s}");
    }
}

#[test]
fn keys_round_trip() {
    for s in [
        "198.19.0.7:8000",
        "198.19.0.0/16:80",
        "0.0.0.0/0:80",
        "*:11434",
        "[2001:2::7]:8000",
        "[2001:2::/48]:8000",
    ] {
        let r = rule(s);
        assert_eq!(InterceptRule::from_key(&r.key()), Some(r), "{s}");
    }
}

#[test]
fn ipv4_rules_use_mapped_prefixes() {
    let k = rule("198.19.0.0/16:8000").key();
    assert_eq!(k.prefix_len(), 16 + 96 + 16);
    assert_eq!(&k.data().addr[10..12], &[0xff, 0xff]);
    assert_eq!(rule("*:8000").key().prefix_len(), 16);
}

#[test]
fn matching_follows_the_prefix_and_the_port() {
    let net = rule("198.19.0.0/16:8000");
    assert!(net.matches(ip("198.19.255.1"), 8000));
    assert!(!net.matches(ip("198.18.0.1"), 8000));
    assert!(!net.matches(ip("198.19.0.1"), 8001));
    assert!(!net.matches(ip("2001:2::1"), 8000));
    let any = rule("*:8000");
    assert!(any.matches(ip("2001:2::1"), 8000));
    assert!(any.matches(ip("10.0.0.1"), 8000));
    let v6 = rule("[2001:2::/64]:8000");
    assert!(v6.matches(ip("2001:2::ffff"), 8000));
    assert!(!v6.matches(ip("2001:2:0:1::1"), 8000));
}

#[test]
fn rule_values_carry_the_policy_choices() {
    let mut r = Rule::new(rule("*:8000"), 7);
    assert_eq!(r.value().flags, sluice_common::intercept::FLAG_ANY_ADDR);
    r.failure_mode = FailureMode::FailClosed;
    r.include_system = true;
    r.include_host_network = true;
    let back = Rule::from_entry(&r.dst.key(), &r.value());
    assert_eq!(back, Some(r));
}
