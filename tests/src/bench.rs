//! What the benchmark load generators share: a foundation-lab donation to register machines in.

use diesel_async::AsyncPgConnection;
use fleetyard::db::{self, Json};
use fleetyard::domain::{DonationId, DonationModel, DonationStatus, DonorId, DonorKind, SiteId, SiteKind};

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
