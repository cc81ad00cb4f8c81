//! What ops let a CI service token do: the tenants it acts for and the highest priority it may
//! ask for. Pure rules; the token's row holds the values.

use super::FieldErrors;
use super::Problem;

/// Whether `tenant` is a well-formed tenant name.
pub fn check_tenant(value: &str) -> Result<(), Problem> {
    let ok = (1..=64).contains(&value.len())
        && value.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b))
        && value.as_bytes()[0].is_ascii_alphanumeric();
    if ok { Ok(()) } else { Err(Problem::NotATenant) }
}

/// Checks the tenants a token is bound to: each a tenant name, or a prefix ending in `*`
/// (`sig-*` covers every tenant starting `sig-`; `*` alone covers all of them).
pub fn check_tenant_patterns(field: &str, patterns: &[String], errors: &mut FieldErrors) {
    if patterns.is_empty() {
        errors.add(field, Problem::NoTenant);
    }
    if patterns.len() > 100 {
        errors.add(field, Problem::TooMany { max: 100 });
    }
    for (i, pattern) in patterns.iter().enumerate() {
        let ok = match pattern.strip_suffix('*') {
            Some("") => true,
            Some(prefix) => check_tenant(prefix).is_ok(),
            None => check_tenant(pattern).is_ok(),
        };
        if !ok {
            errors.add(format!("{field}[{i}]"), Problem::NotATenantPattern);
        }
    }
}

/// Whether a token bound to `patterns` may act for `tenant`.
pub fn covers(patterns: &[String], tenant: &str) -> bool {
    patterns.iter().any(|p| match p.strip_suffix('*') {
        Some(prefix) => tenant.starts_with(prefix),
        None => p == tenant,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owned(patterns: &[&str]) -> Vec<String> {
        patterns.iter().map(|p| (*p).to_owned()).collect()
    }

    #[test]
    fn a_token_acts_for_the_tenants_it_names_and_the_prefixes_it_ends_with_a_star() {
        let bound = owned(&["ci-gate", "sig-*"]);
        assert!(covers(&bound, "ci-gate"));
        assert!(covers(&bound, "sig-riscv"));
        assert!(!covers(&bound, "ci-gate-2"));
        assert!(!covers(&bound, "other"));
        assert!(covers(&owned(&["*"]), "anything"));
        assert!(!covers(&[], "ci-gate"));
    }

    #[test]
    fn patterns_must_be_tenants_or_prefixes() {
        let mut errors = FieldErrors::new();
        check_tenant_patterns("tenants", &owned(&["ok", "sig-*", "*", "Bad", "a*b", "-*"]), &mut errors);
        let fields: Vec<&str> = errors.as_slice().iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["tenants[3]", "tenants[4]", "tenants[5]"]);
        let mut errors = FieldErrors::new();
        check_tenant_patterns("tenants", &[], &mut errors);
        assert_eq!(errors.as_slice().len(), 1);
    }
}
