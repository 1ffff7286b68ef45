//! Label selectors (`matchLabels` and `matchExpressions`) evaluated locally.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use super::crds::{Invalid, common::Validator};

/// True when `labels` satisfy `selector`. An empty selector matches everything (the
/// Kubernetes convention for `namespaceSelector: {}`).
pub fn matches(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    let by_label = selector
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    by_label
        && selector.match_expressions.iter().flatten().all(|e| {
            let values = e.values.as_deref().unwrap_or_default();
            let value = labels.get(&e.key);
            match e.operator.as_str() {
                "In" => value.is_some_and(|v| values.contains(v)),
                "NotIn" => value.is_none_or(|v| !values.contains(v)),
                "Exists" => value.is_some(),
                "DoesNotExist" => value.is_none(),
                // Rejected by `validate`; never matches if one slips through.
                _ => false,
            }
        })
}

/// Checks operators and value lists the way the API server does for built-in selectors.
pub fn validate(selector: &LabelSelector, path: &str, v: &mut Validator) {
    for (i, e) in selector.match_expressions.iter().flatten().enumerate() {
        let path = format!("{path}.matchExpressions[{i}]");
        let n = e.values.as_ref().map_or(0, Vec::len);
        match e.operator.as_str() {
            "In" | "NotIn" => v.check(
                n > 0,
                format!("{path}.values"),
                "must be non-empty for In and NotIn",
            ),
            "Exists" | "DoesNotExist" => v.check(
                n == 0,
                format!("{path}.values"),
                "must be empty for Exists and DoesNotExist",
            ),
            other => v.error(
                format!("{path}.operator"),
                format!("{other:?} is not one of In, NotIn, Exists, DoesNotExist"),
            ),
        }
    }
}

/// Validates a selector on its own.
pub fn check(selector: &LabelSelector, path: &str) -> Result<(), Invalid> {
    let mut v = Validator::default();
    validate(selector, path, &mut v);
    v.finish()
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn expr(key: &str, op: &str, values: &[&str]) -> LabelSelectorRequirement {
        LabelSelectorRequirement {
            key: key.to_owned(),
            operator: op.to_owned(),
            values: (!values.is_empty()).then(|| values.iter().map(|s| (*s).to_owned()).collect()),
        }
    }

    #[test]
    fn match_labels_and_expressions() {
        let sel = LabelSelector {
            match_labels: Some(labels(&[("team", "a")])),
            match_expressions: Some(vec![
                expr("tier", "In", &["gold", "silver"]),
                expr("legacy", "DoesNotExist", &[]),
            ]),
        };
        assert!(matches(&sel, &labels(&[("team", "a"), ("tier", "gold")])));
        assert!(!matches(
            &sel,
            &labels(&[("team", "a"), ("tier", "bronze")])
        ));
        assert!(!matches(
            &sel,
            &labels(&[("team", "a"), ("tier", "gold"), ("legacy", "")])
        ));
        assert!(!matches(&sel, &labels(&[("tier", "gold")])));
        assert!(matches(&LabelSelector::default(), &labels(&[])));
    }

    #[test]
    fn bad_operators_and_values_are_reported() {
        let sel = LabelSelector {
            match_labels: None,
            match_expressions: Some(vec![expr("a", "Equals", &["x"]), expr("b", "In", &[])]),
        };
        let Err(Invalid(errors)) = check(&sel, "spec.clients.namespaceSelector") else {
            panic!("accepted")
        };
        assert_eq!(errors.len(), 2);
        assert_eq!(
            errors[0].path,
            "spec.clients.namespaceSelector.matchExpressions[0].operator"
        );
        assert_eq!(
            errors[1].path,
            "spec.clients.namespaceSelector.matchExpressions[1].values"
        );
    }
}
