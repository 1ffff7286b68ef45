use super::*;

fn w(s: &str) -> Window {
    s.parse().unwrap()
}

#[test]
fn windows_parse_and_print() {
    assert_eq!(w("1s").secs(), 1);
    assert_eq!(w("90s").secs(), 90);
    assert_eq!(w("1m").secs(), 60);
    assert_eq!(w("2h").secs(), 7200);
    assert_eq!(w("1d").secs(), 86_400);
    assert_eq!(w("120s").to_string(), "2m");
    assert_eq!(w("90s").to_string(), "90s");
    assert_eq!(w("24h").to_string(), "1d");
    for bad in [
        "",
        "s",
        "0s",
        "1",
        "1w",
        "-1s",
        "1.5m",
        " 1m",
        "367d",
        "99999999999999999999s",
    ] {
        assert!(bad.parse::<Window>().is_err(), "{bad:?} parsed");
    }
}

#[test]
fn windows_align_to_the_epoch() {
    let m = w("1m");
    assert_eq!(m.index(59_999), 0);
    assert_eq!(m.index(60_000), 1);
    assert_eq!(m.end_ms(1), 120_000);
}

fn budget() -> BudgetConfig {
    BudgetConfig::new("b", vec![LimitConfig::new(w("1m")).total_tokens(100)])
}

#[test]
fn validation_names_the_fault() {
    let ok = QuotaConfig::new(TenantKey::Namespace, vec![budget()]);
    assert_eq!(ok.validate(), Ok(()));

    let dup = QuotaConfig::new(TenantKey::Namespace, vec![budget(), budget()]);
    assert!(matches!(
        dup.validate(),
        Err(ConfigError::DuplicateBudget { .. })
    ));

    let mut empty = budget();
    empty.limits = vec![LimitConfig::new(w("1m"))];
    let c = QuotaConfig::new(TenantKey::Namespace, vec![empty]);
    assert!(matches!(c.validate(), Err(ConfigError::EmptyLimit { .. })));

    let mut zero = budget();
    zero.limits[0].requests = Some(0);
    let c = QuotaConfig::new(TenantKey::Namespace, vec![zero]);
    assert_eq!(
        c.validate().unwrap_err().to_string(),
        format!("budget \"b\", window 1m: requests is 0; it must be between 1 and {MAX_LIMIT}")
    );

    let mut twice = budget();
    twice.limits.push(LimitConfig::new(w("60s")).requests(1));
    let c = QuotaConfig::new(TenantKey::Namespace, vec![twice]);
    assert!(matches!(
        c.validate(),
        Err(ConfigError::DuplicateWindow { .. })
    ));

    let mut cluster = budget();
    cluster.scope = Scope::Cluster;
    let c = QuotaConfig::new(TenantKey::Namespace, vec![cluster]);
    assert!(matches!(
        c.validate(),
        Err(ConfigError::NoClusterStore { .. })
    ));

    let c = QuotaConfig::new(
        TenantKey::PodLabel {
            label: String::new(),
        },
        vec![],
    );
    assert_eq!(c.validate(), Err(ConfigError::EmptyLabel));

    let nested = TenantKey::ApiKey {
        keys: ApiKeys::default(),
        fallback: Box::new(TenantKey::ApiKey {
            keys: ApiKeys::default(),
            fallback: Box::new(TenantKey::Namespace),
        }),
    };
    let c = QuotaConfig::new(nested, vec![]);
    assert_eq!(c.validate(), Err(ConfigError::NestedApiKey));
}

#[test]
fn api_keys_never_print() {
    let keys = ApiKeys::new([("sk-CANARY-123".to_owned(), "team-a".to_owned())]);
    let shown = format!(
        "{keys:?} {:?}",
        TenantKey::ApiKey {
            keys: keys.clone(),
            fallback: Box::new(TenantKey::Namespace)
        }
    );
    assert!(!shown.contains("CANARY"), "{shown}");
    assert_eq!(keys.tenant("sk-CANARY-123"), Some("team-a"));
}
