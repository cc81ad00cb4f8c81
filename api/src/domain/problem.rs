//! Every problem a request's field can have, in one list. Each has a stable code (`between`,
//! `not-a-date`) and its arguments, which the API sends with the English text and the pages
//! translate: the texts are `problem-<code>` in the Fluent files (`api/locales/`), and a test
//! fails if one is missing in either language.

use serde::Serialize;

use crate::locale::{self, Lang};

/// One problem with one field. The code is the variant's name in kebab-case.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, strum::EnumIter, strum::IntoStaticStr)]
#[serde(tag = "code", content = "args", rename_all = "kebab-case")]
#[strum(serialize_all = "kebab-case")]
pub enum Problem {
    // Presence, size and form, for any field.
    Required,
    Blank,
    TooLong { max: u64 },
    TooManyBytes { max: u64 },
    TooShort { min: u64 },
    ControlCharacters,
    Nul,
    Between { min: i64, max: i64 },
    PositiveAmount { unit: String },
    TooMany { max: u64 },
    NoneGiven,
    Repeated,
    WholeNumber,
    NotOneOf { value: String, expected: String },
    UnknownField { expected: String },
    Invalid { detail: String },
    NotAJsonObject,
    VisibleAscii { min: u64, max: u64 },
    // Values of a kind.
    NotADate { value: String },
    NotATime { value: String },
    NotAClockTime { value: String },
    NotAMonth,
    MonthToCome,
    NotATimeZone { value: String },
    NotAHost,
    NotAnEmail,
    NotAUrl { example: String },
    NotACountry,
    NotAnAssetTag,
    NotAUnixUser,
    NotAnSshKey,
    NotATenant,
    NotATenantPattern,
    NoTenant,
    NotALabelKey,
    NotALabelValue,
    NotALabelPair { pair: String },
    NotAnEnvName,
    NotAnEnvValue,
    NotAnId,
    NotAPathValue,
    NotAnAction,
    NotACursor,
    KeyReused,
    // Fleetyard's own rules.
    TagRepeated { tag: String, first: u64 },
    TagTaken { tag: String },
    AgreementRefTaken,
    AlsoSet { key: String },
    NoSuchDonor,
    NoSuchSite,
    OwnDonorOnly,
    DonorNeeded,
    WrongSiteKind { model: String, need: String, kind: String },
    LoanNeedsEnd,
    OwnershipHasNoEnd,
    NotAfter { other: String },
    PolicyNeeded,
    PolicyNotAllowed,
    WindowOpensAtMidnight,
    SameAsStart,
    LocationNeeded,
    OnlyWhenReceived,
    MaintenanceReason,
    ReasonNeeded { action: String },
    StateNeeded,
    DonorSiteOnly,
    RequiredForKind { kind: String },
    DonorSiteHasDonor,
    CloudRegionOnly,
    RequiredForDonorUser,
    AdminHasNoDonor,
    NotAUserRole,
    UnknownCloudAccount,
    UnknownCloudRegion,
    InstanceIds,
    IdsOrTag,
    IdsAndTag,
    CloudTagSize,
    EnrollWith,
    TenantNotGranted { tenants: String },
    AboveGrant { max: i64 },
}

impl Problem {
    /// The stable code clients may match on, e.g. `between`.
    pub fn code(&self) -> &'static str {
        self.into()
    }

    /// The arguments of the text, by name (`{"min": 1, "max": 4096}`), or `null`.
    pub fn args(&self) -> serde_json::Value {
        serde_json::to_value(self)
            .ok()
            .and_then(|mut v| v.get_mut("args").map(serde_json::Value::take))
            .unwrap_or_default()
    }

    /// The problem in `lang`.
    pub fn text(&self, lang: Lang) -> String {
        locale::text_with(lang, &format!("problem-{}", self.code()), &locale::args_of(&self.args()))
    }

    /// The problem in English, as the API words it.
    pub fn english(&self) -> String {
        self.text(Lang::En)
    }

    /// The problem serde reported while reading a request (its message, without the
    /// position), as one of ours: missing and unknown fields, values of the wrong type, and the
    /// messages of our own readers (dates, times).
    pub fn from_serde(message: &str) -> Problem {
        if message.starts_with("missing field ") {
            return Problem::Required;
        }
        if message.starts_with("unknown field ") {
            let expected = message.split_once(", expected ").map_or("nothing", |(_, rest)| rest);
            return Problem::UnknownField { expected: expected.trim_start_matches("one of ").to_owned() };
        }
        if let Some(rest) = message.strip_prefix("unknown variant `")
            && let Some((value, expected)) = rest.split_once("`, expected ")
        {
            let expected = expected.trim_start_matches("one of ").to_owned();
            return Problem::NotOneOf { value: value.to_owned(), expected };
        }
        if message.starts_with("invalid type: ") || message.starts_with("invalid value: ") {
            let expected = message.rsplit_once(", expected ").map(|(_, e)| e).unwrap_or_default();
            let range = match expected {
                "u8" => Some((0, i64::from(u8::MAX))),
                "u16" => Some((0, i64::from(u16::MAX))),
                "u32" => Some((0, i64::from(u32::MAX))),
                "i8" => Some((i64::from(i8::MIN), i64::from(i8::MAX))),
                "i16" => Some((i64::from(i16::MIN), i64::from(i16::MAX))),
                "i32" => Some((i64::from(i32::MIN), i64::from(i32::MAX))),
                _ => None,
            };
            if let (Some((min, max)), true) = (range, message.starts_with("invalid value: integer")) {
                return Problem::Between { min, max };
            }
            let integer = ["u8", "u16", "u32", "u64", "i8", "i16", "i32", "i64", "usize", "isize"];
            if integer.contains(&expected) || expected.contains("integer") {
                return Problem::WholeNumber;
            }
        }
        if let Some(rest) = message.strip_prefix('`') {
            let value = |suffix: &str| rest.strip_suffix(suffix).map(str::to_owned);
            if let Some(value) = value("` is not a date in YYYY-MM-DD form") {
                return Problem::NotADate { value };
            }
            if let Some(value) = value("` is not a time in RFC 3339 form") {
                return Problem::NotATime { value };
            }
            if let Some(value) = value("` is not a time of day in HH:MM form (00:00 to 24:00)") {
                return Problem::NotAClockTime { value };
            }
        }
        Problem::Invalid { detail: message.to_owned() }
    }
}

/// The code of a [`Problem`] in the OpenAPI document, its values listed.
pub struct ProblemCode;

impl utoipa::PartialSchema for ProblemCode {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use strum::IntoEnumIterator;
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .description(Some("A field problem's stable code (its texts are `problem-<code>` in `api/locales/`)."))
            .enum_values(Some(Problem::iter().map(|p| p.code())))
            .into()
    }
}

impl utoipa::ToSchema for ProblemCode {}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.english())
    }
}

#[cfg(test)]
mod tests {
    use strum::IntoEnumIterator;

    use super::*;

    #[test]
    fn every_problem_has_a_text_in_both_languages_with_its_arguments_filled() {
        for problem in Problem::iter() {
            for lang in Lang::ALL {
                let key = format!("problem-{}", problem.code());
                if let Err(e) = locale::exact(lang, &key, &locale::args_of(&problem.args())) {
                    panic!("{lang:?} `{key}`: {e}");
                }
            }
        }
    }

    #[test]
    fn a_problem_is_sent_as_its_code_its_arguments_and_its_english_text() {
        let problem = Problem::Between { min: 1, max: 4096 };
        assert_eq!(problem.code(), "between");
        assert_eq!(problem.args(), serde_json::json!({"min": 1, "max": 4096}));
        assert_eq!(problem.english(), "must be between 1 and 4096");
        assert_eq!(problem.text(Lang::ZhCn), "必须在 1 到 4096 之间");
        assert_eq!(Problem::Blank.args(), serde_json::Value::Null);
    }

    #[test]
    fn serde_s_messages_become_our_problems() {
        assert_eq!(Problem::from_serde("missing field `arch`"), Problem::Required);
        assert_eq!(
            Problem::from_serde("unknown variant `sparc`, expected one of `x86_64`, `aarch64`"),
            Problem::NotOneOf { value: "sparc".into(), expected: "`x86_64`, `aarch64`".into() }
        );
        assert_eq!(Problem::from_serde("invalid type: string \"lots\", expected u32"), Problem::WholeNumber);
        assert_eq!(
            Problem::from_serde("invalid value: integer `-1`, expected u32"),
            Problem::Between { min: 0, max: 4_294_967_295 }
        );
        assert_eq!(
            Problem::from_serde("`2026-13-01` is not a date in YYYY-MM-DD form"),
            Problem::NotADate { value: "2026-13-01".into() }
        );
        assert_eq!(
            Problem::from_serde("`25:00` is not a time of day in HH:MM form (00:00 to 24:00)"),
            Problem::NotAClockTime { value: "25:00".into() }
        );
        assert_eq!(
            Problem::from_serde("invalid type: map, expected a string"),
            Problem::Invalid { detail: "invalid type: map, expected a string".into() }
        );
    }
}
