//! How domain types are stored: text enumerations as their spelling, structured values as
//! JSONB through [`Json`].

use std::io::Write;

use diesel::deserialize::{self, FromSql};
use diesel::pg::{Pg, PgValue};
use diesel::serialize::{self, IsNull, Output, ToSql};
use diesel::sql_types::{Jsonb, Text};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::domain::cloud::{CloudErrorKind, InstanceState, LaunchState, Market, Placement};
use crate::domain::usage_policy::Purpose;
use crate::domain::{
    ActorKind, Arch, CloudProvider, DonationModel, DonationStatus, DonorKind, Health, HolderKind, JobState, LeaseState,
    LifecycleState, Role, SiteKind,
};

macro_rules! text_sql {
    ($($ty:ty),+ $(,)?) => {$(
        impl ToSql<Text, Pg> for $ty {
            fn to_sql<'b>(&'b self, out: &mut Output<'b, '_, Pg>) -> serialize::Result {
                out.write_all(self.as_str().as_bytes())?;
                Ok(IsNull::No)
            }
        }

        impl FromSql<Text, Pg> for $ty {
            fn from_sql(value: PgValue<'_>) -> deserialize::Result<Self> {
                Ok(std::str::from_utf8(value.as_bytes())?.parse()?)
            }
        }
    )+};
}

text_sql!(
    ActorKind,
    Arch,
    CloudErrorKind,
    CloudProvider,
    DonationModel,
    DonationStatus,
    DonorKind,
    Health,
    HolderKind,
    InstanceState,
    JobState,
    LaunchState,
    LeaseState,
    LifecycleState,
    Market,
    Placement,
    Purpose,
    Role,
    SiteKind,
);

/// A value stored as JSONB and handled as `T` in Rust.
#[derive(Debug, Clone, PartialEq, diesel::expression::AsExpression, diesel::deserialize::FromSqlRow)]
#[diesel(sql_type = Jsonb)]
pub struct Json<T>(pub T);

impl<T: Serialize + std::fmt::Debug> ToSql<Jsonb, Pg> for Json<T> {
    fn to_sql<'b>(&'b self, out: &mut Output<'b, '_, Pg>) -> serialize::Result {
        out.write_all(&[1])?; // JSONB binary format version
        serde_json::to_writer(out, &self.0)?;
        Ok(IsNull::No)
    }
}

impl<T: DeserializeOwned + std::fmt::Debug> FromSql<Jsonb, Pg> for Json<T> {
    fn from_sql(value: PgValue<'_>) -> deserialize::Result<Self> {
        match value.as_bytes().split_first() {
            Some((1, json)) => Ok(Json(serde_json::from_slice(json)?)),
            _ => Err("unsupported JSONB format version".into()),
        }
    }
}
