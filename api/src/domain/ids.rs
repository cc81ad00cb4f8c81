//! Identifier newtypes, so a `MachineId` is never passed where a `DonorId` was meant.

use uuid::Uuid;

macro_rules! id_type {
    ($(#[$meta:meta])* $name:ident) => {
        $(#[$meta])*
        #[derive(
            Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord,
            serde::Serialize, serde::Deserialize, utoipa::ToSchema,
            diesel_derive_newtype::DieselNewType,
        )]
        #[serde(transparent)]
        #[schema(value_type = String, format = Uuid)]
        pub struct $name(pub Uuid);

        impl $name {
            /// A fresh, time-ordered (v7) identifier.
            pub fn generate() -> Self {
                Self(Uuid::now_v7())
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                self.0.fmt(f)
            }
        }

        impl From<$name> for Uuid {
            fn from(id: $name) -> Uuid {
                id.0
            }
        }
    };
}

id_type!(
    /// A donor organisation.
    DonorId
);
id_type!(
    /// A site: the foundation's lab, a donor's site or a cloud region.
    SiteId
);
id_type!(
    /// A user account (ops or a donor's staff).
    UserId
);
id_type!(
    /// A donation agreement.
    DonationId
);
id_type!(
    /// A machine in the inventory.
    MachineId
);
id_type!(
    /// An API token (service account or machine credential); also the token's `jti`.
    TokenId
);
id_type!(
    /// A lease: a machine held for a CI runner (and later, for a job).
    LeaseId
);
id_type!(
    /// A build or test job.
    JobId
);
