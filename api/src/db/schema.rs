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
        session_generation -> Int4,
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
        donation_id -> Nullable<Uuid>,
        donor_id -> Nullable<Uuid>,
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
        health_reason -> Nullable<Text>,
        health_changed_at -> Nullable<Timestamptz>,
        quarantined_at -> Nullable<Timestamptz>,
        quarantine_reason -> Nullable<Text>,
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
        tenants -> Array<Text>,
        max_priority -> Int4,
        max_queued_leases -> Nullable<Int4>,
        max_queued_jobs -> Nullable<Int4>,
        revoked_xid -> Nullable<Int8>,
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

diesel::table! {
    machine_status (machine_id) {
        machine_id -> Uuid,
        last_heartbeat_at -> Nullable<Timestamptz>,
        agent_version -> Nullable<Text>,
        load1 -> Nullable<Float4>,
        disk_used_pct -> Nullable<Float4>,
        clock_skew_ms -> Nullable<Int4>,
        uptime_secs -> Nullable<Int8>,
        overloaded_since -> Nullable<Timestamptz>,
        facts -> Nullable<Jsonb>,
        facts_source -> Nullable<Text>,
        facts_hash -> Nullable<Int8>,
        facts_at -> Nullable<Timestamptz>,
        mismatches -> Jsonb,
        last_ssh_check_at -> Nullable<Timestamptz>,
        last_ssh_ok_at -> Nullable<Timestamptz>,
        ssh_failures -> Int4,
        ssh_error -> Nullable<Text>,
        ssh_host_key -> Nullable<Text>,
        ssh_host_key_fingerprint -> Nullable<Text>,
        probe_requested_at -> Nullable<Timestamptz>,
        leases_granted -> Int8,
        unreachable_episodes -> Int4,
        lost_leases -> Int4,
        crashed_jobs -> Int4,
    }
}

diesel::table! {
    enrollment_tokens (id) {
        id -> Uuid,
        machine_id -> Uuid,
        secret_hash -> Binary,
        created_by -> Nullable<Uuid>,
        created_at -> Timestamptz,
        expires_at -> Timestamptz,
        used_at -> Nullable<Timestamptz>,
        revoked_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    platform_keys (name) {
        name -> Text,
        private_key -> Text,
        public_key -> Text,
        fingerprint -> Text,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    job_runs (job) {
        job -> Text,
        last_started_at -> Nullable<Timestamptz>,
        last_finished_at -> Nullable<Timestamptz>,
        lease_until -> Nullable<Timestamptz>,
        run_by -> Nullable<Text>,
        runs -> Int8,
        last_outcome -> Nullable<Text>,
        last_report -> Nullable<Jsonb>,
        resumed_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    reminders_sent (donation_id, ends_on, days_before) {
        donation_id -> Uuid,
        ends_on -> Date,
        days_before -> Int4,
        sent_at -> Timestamptz,
    }
}

diesel::table! {
    events (id) {
        id -> Uuid,
        #[sql_name = "type"]
        event_type -> Text,
        subject -> Text,
        time -> Timestamptz,
        donor_id -> Nullable<Uuid>,
        data -> Jsonb,
    }
}

diesel::table! {
    webhook_subscriptions (id) {
        id -> Uuid,
        url -> Text,
        secret -> Text,
        event_types -> Array<Text>,
        description -> Nullable<Text>,
        active -> Bool,
        created_by -> Nullable<Uuid>,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
    }
}

diesel::table! {
    webhook_deliveries (id) {
        id -> Int8,
        event_id -> Uuid,
        subscription_id -> Uuid,
        attempts -> Int4,
        next_attempt_at -> Timestamptz,
        delivered_at -> Nullable<Timestamptz>,
        abandoned_at -> Nullable<Timestamptz>,
        last_status -> Nullable<Int4>,
        last_error -> Nullable<Text>,
        created_at -> Timestamptz,
        claimed_until -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    leases (id) {
        id -> Uuid,
        state -> Text,
        holder_kind -> Text,
        holder_id -> Uuid,
        holder_name -> Text,
        idempotency_key -> Nullable<Text>,
        request_hash -> Binary,
        tenant -> Text,
        purpose -> Text,
        priority -> Int4,
        arch -> Text,
        min_cores -> Int4,
        min_memory_mib -> Int8,
        min_disk_gib -> Int8,
        labels -> Jsonb,
        trusted_only -> Bool,
        duration_secs -> Int4,
        ssh_public_key -> Nullable<Text>,
        queued_at -> Timestamptz,
        deadline -> Timestamptz,
        machine_id -> Nullable<Uuid>,
        donation_id -> Nullable<Uuid>,
        donor_id -> Nullable<Uuid>,
        granted_at -> Nullable<Timestamptz>,
        expires_at -> Nullable<Timestamptz>,
        ended_at -> Nullable<Timestamptz>,
        end_reason -> Nullable<Text>,
        job_id -> Nullable<Uuid>,
        placement -> Text,
        max_lab_wait_secs -> Int4,
        cloud_note -> Nullable<Text>,
        cloud_instance_id -> Nullable<Uuid>,
    }
}

diesel::table! {
    cloud_launches (id) {
        id -> Uuid,
        account -> Text,
        provider -> Text,
        region -> Text,
        flavour -> Text,
        market -> Text,
        image -> Text,
        count -> Int4,
        client_token -> Text,
        state -> Text,
        secret_hash -> Binary,
        secret_expires_at -> Timestamptz,
        claimed_until -> Nullable<Timestamptz>,
        calls -> Int4,
        created_at -> Timestamptz,
        finished_at -> Nullable<Timestamptz>,
        error_kind -> Nullable<Text>,
        error_code -> Nullable<Text>,
        error_message -> Nullable<Text>,
    }
}

diesel::table! {
    cloud_instances (id) {
        id -> Uuid,
        state -> Text,
        account -> Text,
        provider -> Text,
        region -> Text,
        flavour -> Text,
        market -> Text,
        arch -> Text,
        cores -> Int4,
        memory_mib -> Int8,
        disk_gib -> Int8,
        hourly_micros -> Int8,
        tenant -> Nullable<Text>,
        lease_id -> Nullable<Uuid>,
        launch_id -> Nullable<Uuid>,
        provider_id -> Nullable<Text>,
        machine_id -> Nullable<Uuid>,
        imported -> Bool,
        created_at -> Timestamptz,
        launched_at -> Nullable<Timestamptz>,
        enrolled_at -> Nullable<Timestamptz>,
        ready_at -> Nullable<Timestamptz>,
        claimed_until -> Nullable<Timestamptz>,
        deadline -> Nullable<Timestamptz>,
        missing_since -> Nullable<Timestamptz>,
        ended_at -> Nullable<Timestamptz>,
        end_reason -> Nullable<Text>,
    }
}

diesel::table! {
    cloud_unavailable (id) {
        id -> Int8,
        account -> Text,
        region -> Nullable<Text>,
        flavour -> Nullable<Text>,
        market -> Nullable<Text>,
        kind -> Text,
        reason -> Text,
        until -> Timestamptz,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    cloud_rate_buckets (account, region, bucket) {
        account -> Text,
        region -> Text,
        bucket -> Text,
        tokens -> Float8,
        updated_at -> Timestamptz,
    }
}

diesel::table! {
    cloud_calls (account, region, operation) {
        account -> Text,
        region -> Text,
        operation -> Text,
        ok -> Int8,
        failed -> Int8,
        throttled -> Int8,
        last_error -> Nullable<Text>,
        last_error_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    cloud_imports (id) {
        id -> Uuid,
        account -> Text,
        region -> Text,
        instance_ids -> Array<Text>,
        tag_key -> Nullable<Text>,
        tag_value -> Nullable<Text>,
        state -> Text,
        requested_by -> Nullable<Uuid>,
        created_at -> Timestamptz,
        claimed_until -> Nullable<Timestamptz>,
        finished_at -> Nullable<Timestamptz>,
        machine_ids -> Array<Uuid>,
        error -> Nullable<Text>,
    }
}

diesel::table! {
    jobs (id) {
        id -> Uuid,
        state -> Text,
        holder_kind -> Text,
        holder_id -> Uuid,
        holder_name -> Text,
        idempotency_key -> Nullable<Text>,
        request_hash -> Binary,
        tenant -> Text,
        command -> Text,
        env -> Jsonb,
        timeout_secs -> Int4,
        max_wait_secs -> Int4,
        max_attempts -> Int4,
        attempts -> Int4,
        machine_id -> Nullable<Uuid>,
        created_at -> Timestamptz,
        started_at -> Nullable<Timestamptz>,
        finished_at -> Nullable<Timestamptz>,
        exit_code -> Nullable<Int4>,
        end_reason -> Nullable<Text>,
        output_bytes -> Int8,
    }
}

diesel::table! {
    job_output (job_id, seq) {
        job_id -> Uuid,
        seq -> Int8,
        attempt -> Int4,
        data -> Binary,
    }
}

diesel::joinable!(machine_status -> machines (machine_id));
diesel::joinable!(leases -> machines (machine_id));
diesel::joinable!(webhook_deliveries -> events (event_id));
diesel::joinable!(webhook_deliveries -> webhook_subscriptions (subscription_id));
diesel::joinable!(machines -> donations (donation_id));
diesel::joinable!(donations -> donors (donor_id));
diesel::joinable!(sites -> donors (donor_id));
diesel::joinable!(cloud_instances -> machines (machine_id));
diesel::joinable!(cloud_instances -> cloud_launches (launch_id));

diesel::allow_tables_to_appear_in_same_query!(
    donors,
    sites,
    users,
    donations,
    machines,
    machine_status,
    api_tokens,
    audit_log,
    enrollment_tokens,
    events,
    webhook_subscriptions,
    webhook_deliveries,
    leases,
    jobs,
    job_output,
    cloud_launches,
    cloud_instances,
    cloud_unavailable,
    cloud_rate_buckets,
    cloud_calls,
    cloud_imports,
);
