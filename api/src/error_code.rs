//! Every error code the API answers with, in one list: clients match on these, the OpenAPI
//! document lists them, and the web pages translate each (`code-<code>` in the Fluent files;
//! a test fails if one is missing in either language).

use serde::Serialize;
use utoipa::ToSchema;

/// A stable, kebab-case error code, e.g. `machine-not-found`.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    Serialize,
    ToSchema,
    strum::EnumIter,
    strum::IntoStaticStr,
    strum::EnumString,
)]
#[serde(rename_all = "kebab-case")]
#[strum(serialize_all = "kebab-case")]
pub enum ErrorCode {
    AgentBinaryNotFound,
    AgreementRefTaken,
    AssetTagTaken,
    BodyTooLarge,
    Busy,
    CannotDisableSelf,
    CloudBudgetExhausted,
    CredentialNotFound,
    DatabaseUnavailable,
    DonationClosed,
    DonationNotFound,
    DonorNameTaken,
    DonorNotFound,
    EmailTaken,
    FactsWanted,
    Forbidden,
    HeartbeatsBacklogged,
    IdempotencyRace,
    ImportNotFound,
    InstanceNotYetKnown,
    InternalError,
    InvalidAction,
    InvalidCredentials,
    InvalidEnrollmentToken,
    InvalidLaunchSecret,
    InvalidTransition,
    JobEnded,
    JobNotFound,
    JobNotRunningHere,
    LabMachine,
    LeaseLimit,
    LeaseNotFound,
    LeaseState,
    LoginBusy,
    MachineNotEnrollable,
    MachineNotFound,
    MalformedJson,
    MethodNotAllowed,
    NoSshEndpoint,
    NoUsagePolicy,
    NotQuarantined,
    PageNotFound,
    QueueCapReached,
    RenewalTooEarly,
    RouteNotFound,
    ScheduleNotFound,
    ServiceTokenNotFound,
    SiteNameTaken,
    SiteNotFound,
    TooManyLoginFailures,
    Unauthenticated,
    UnreadableBody,
    Unsatisfiable,
    UnsupportedMediaType,
    UserNotFound,
    ValidationFailed,
    WebhookNotFound,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use strum::IntoEnumIterator;

    use super::*;
    use crate::locale::{self, Lang};

    #[test]
    fn every_code_has_a_text_in_both_languages() {
        for code in ErrorCode::iter() {
            for lang in Lang::ALL {
                assert!(locale::has(lang, &format!("code-{code}")), "{lang:?} has no `code-{code}`");
            }
        }
    }

    #[test]
    fn codes_are_written_in_kebab_case() {
        assert_eq!(ErrorCode::MachineNotFound.as_str(), "machine-not-found");
        assert_eq!(serde_json::to_value(ErrorCode::QueueCapReached).unwrap(), "queue-cap-reached");
        assert_eq!("validation-failed".parse::<ErrorCode>().unwrap(), ErrorCode::ValidationFailed);
    }
}
