//! What the benchmark load generators share: a foundation-lab donation to register machines in,
//! and a CI token to ask for machines with.

use diesel_async::AsyncPgConnection;
use fleetyard::auth::{TokenKeys, TokenKind};
use fleetyard::config::{Config, Secret};
use fleetyard::db::{self, Json};
use fleetyard::domain::{
    DonationId, DonationModel, DonationStatus, DonorId, DonorKind, Role, SiteId, SiteKind, TokenId,
};

/// A donor, a foundation-lab site and an approved `ownership` donation, written straight to
/// the database; returns the donation's and donor's ids and the site's.
pub async fn lab_donation(conn: &mut AsyncPgConnection, name: &str) -> anyhow::Result<(DonationId, DonorId, SiteId)> {
    let unique = uuid::Uuid::new_v4().simple().to_string();
    let donor = db::donors::insert(
        conn,
        &db::donors::NewDonor {
            id: DonorId::generate(),
            name: &format!("{name} {unique}"),
            kind: DonorKind::Other,
            website: None,
            time_zone: "UTC",
            contacts: Json(&[]),
            notes: None,
        },
    )
    .await?;
    let site = db::sites::insert(
        conn,
        &db::sites::NewSite {
            id: SiteId::generate(),
            name: &format!("{name} lab {unique}"),
            kind: SiteKind::FoundationLab,
            donor_id: None,
            cloud_provider: None,
            cloud_region: None,
            address: None,
            country: None,
            time_zone: "UTC",
        },
    )
    .await?;
    let donation = db::donations::insert(
        conn,
        &db::donations::NewDonation {
            id: DonationId::generate(),
            donor_id: donor.id,
            site_id: site.id,
            model: DonationModel::Ownership,
            status: DonationStatus::Approved,
            agreement_ref: name,
            description: None,
            starts_on: chrono::Utc::now().date_naive(),
            ends_on: None,
            usage_policy: None,
            submitted_by: None,
        },
    )
    .await?;
    Ok((donation.id, donor.id, site.id))
}

/// A CI service token for any tenant, with room to queue a whole burst, written straight to the
/// database and signed with `jwt_secret` (the server's); its bearer form goes to `out`.
pub async fn service_token(
    conn: &mut AsyncPgConnection,
    name: &str,
    jwt_secret: &str,
    out: &std::path::Path,
) -> anyhow::Result<()> {
    let token = TokenId::generate();
    let expires_at = chrono::Utc::now() + chrono::Duration::days(1);
    db::api_tokens::insert_many(
        conn,
        &[db::api_tokens::NewApiToken {
            id: token,
            name,
            role: Role::Ci,
            machine_id: None,
            created_by: None,
            expires_at,
            tenants: &["*".to_owned()],
            max_priority: 100,
            // The benchmark's whole burst may wait at once.
            max_queued_leases: Some(100_000),
            max_queued_jobs: Some(100_000),
        }],
    )
    .await?;
    let keys = TokenKeys::new(&Config { jwt_secret: Secret(jwt_secret.into()), ..Config::default() });
    std::fs::write(out, keys.issue_api_token(token.0, TokenKind::Service, expires_at)?.token)?;
    Ok(())
}
