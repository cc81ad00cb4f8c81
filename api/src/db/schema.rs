//! Diesel's view of the tables in `migrations/`. Kept by hand (diesel_cli needs libpq, which
//! Fleetyard does not link); the test suite exercises every column, so a drift fails loudly.

diesel::table! {
    donors (id) {
        id -> Uuid,
        name -> Text,
        kind -> Text,
        website -> Nullable<Text>,
        time_zone -> Text,
        contacts -> Jsonb,
        notes -> Nullable<Text>,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
    }
}

diesel::table! {
    sites (id) {
        id -> Uuid,
        name -> Text,
        kind -> Text,
        donor_id -> Nullable<Uuid>,
        cloud_provider -> Nullable<Text>,
        cloud_region -> Nullable<Text>,
        address -> Nullable<Text>,
        country -> Nullable<Text>,
        time_zone -> Text,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
    }
}

diesel::table! {
    users (id) {
        id -> Uuid,
        email -> Text,
        display_name -> Text,
        password_hash -> Text,
        role -> Text,
        donor_id -> Nullable<Uuid>,
        disabled_at -> Nullable<Timestamptz>,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
    }
}

diesel::table! {
    donations (id) {
        id -> Uuid,
        donor_id -> Uuid,
        site_id -> Uuid,
        model -> Text,
        status -> Text,
        agreement_ref -> Text,
        description -> Nullable<Text>,
        starts_on -> Date,
        ends_on -> Nullable<Date>,
        usage_policy -> Nullable<Jsonb>,
        review_note -> Nullable<Text>,
        reviewed_by -> Nullable<Uuid>,
        reviewed_at -> Nullable<Timestamptz>,
        submitted_by -> Nullable<Uuid>,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
    }
}

diesel::table! {
    machines (id) {
        id -> Uuid,
        donation_id -> Uuid,
        donor_id -> Uuid,
        site_id -> Uuid,
        hostname -> Nullable<Text>,
        asset_tag -> Nullable<Text>,
        arch -> Text,
        cpu_model -> Text,
        cpu_cores -> Int4,
        memory_mib -> Int8,
        disk_gib -> Int8,
        accelerators -> Jsonb,
        labels -> Jsonb,
        ssh_host -> Nullable<Text>,
        ssh_port -> Nullable<Int4>,
        ssh_user -> Nullable<Text>,
        warranty_until -> Nullable<Date>,
        lifecycle -> Text,
        lifecycle_changed_at -> Timestamptz,
        lifecycle_deadline -> Nullable<Timestamptz>,
        health -> Text,
        rack -> Nullable<Text>,
        slot -> Nullable<Text>,
        maintenance_reason -> Nullable<Text>,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
    }
}

diesel::table! {
    api_tokens (id) {
        id -> Uuid,
        name -> Text,
        role -> Text,
        machine_id -> Nullable<Uuid>,
        created_by -> Nullable<Uuid>,
        created_at -> Timestamptz,
        expires_at -> Timestamptz,
        revoked_at -> Nullable<Timestamptz>,
        revoked_by -> Nullable<Uuid>,
    }
}

diesel::table! {
    audit_log (id) {
        id -> Int8,
        at -> Timestamptz,
        actor_kind -> Text,
        actor_id -> Nullable<Uuid>,
        actor_name -> Text,
        action -> Text,
        entity_type -> Text,
        entity_id -> Uuid,
        donor_id -> Nullable<Uuid>,
        note -> Nullable<Text>,
        before -> Nullable<Jsonb>,
        after -> Nullable<Jsonb>,
    }
}

diesel::joinable!(machines -> donations (donation_id));
diesel::joinable!(donations -> donors (donor_id));
diesel::joinable!(sites -> donors (donor_id));

diesel::allow_tables_to_appear_in_same_query!(donors, sites, users, donations, machines, api_tokens, audit_log,);
