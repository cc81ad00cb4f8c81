//! Jobs run by the real agent as their own user: apart from the agent and its state, in a cgroup killed whole at their end.

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::PathBuf;
use std::time::Duration;

use common::{Account, Agent, Fleetyard, account, alive, gone_within, job, job_id, must_be_root};
use serde_json::{Value, json};

const JOB_USER: &str = "fy-agent-job";
/// Starts a daemon as a job would to escape: it forks twice and leaves the session (setsid),
/// so it is neither the shell's child nor in its process group; it says its pid first.
const DAEMON: &str = "( setsid sh -c 'echo \"daemon $$\"; exec sleep 1000' & ); ";

/// An agent that runs jobs as the job user, with its jobs' directories in its scratch space.
fn isolated(server: &Fleetyard) -> (Agent, Account, PathBuf) {
    must_be_root();
    let user = account(JOB_USER, false);
    let mut agent = Agent::new(server, &format!("job_user = {JOB_USER:?}"));
    let jobs_dir = agent.base.path.join("jobs");
    let config = std::fs::read_to_string(&agent.config).unwrap();
    std::fs::write(&agent.config, format!("{config}jobs_dir = {:?}\n", jobs_dir.display().to_string())).unwrap();
    agent.start();
    (agent, user, jobs_dir)
}

fn finished(server: &Fleetyard, agent: &Agent, id: &str, within: Duration) -> Value {
    server
        .wait_for(within, |s| s.finished.get(id).cloned())
        .unwrap_or_else(|| panic!("job {id} did not finish in {within:?}; agent log:\n{}", agent.log()))
}

/// The pid printed after `label` in the job's output, once it is there.
fn printed_pid(server: &Fleetyard, agent: &Agent, id: &str, label: &str) -> i32 {
    server
        .wait_for(Duration::from_secs(15), |s| {
            let output = s.output.get(id)?;
            output.lines().find_map(|l| l.strip_prefix(label)?.trim().parse().ok())
        })
        .unwrap_or_else(|| {
            panic!("no {label:?} in the output of {id}: {:?}; agent log:\n{}", server.output(id), agent.log())
        })
}

/// The job's cgroup directory, read from a process in it.
fn cgroup_of(pid: i32) -> PathBuf {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let own = text.lines().find_map(|l| l.strip_prefix("0::")).expect("a cgroup v2 line").to_owned();
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let mount = mountinfo
        .lines()
        .find_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            right.starts_with("cgroup2 ").then(|| left.split(' ').nth(4).unwrap().to_owned())
        })
        .expect("a cgroup2 mount");
    PathBuf::from(mount).join(own.trim_start_matches('/'))
}

#[test]
fn a_job_runs_as_the_job_user_with_exactly_its_environment_and_its_workdir_goes_after() {
    let server = Fleetyard::start();
    let (agent, user, jobs_dir) = isolated(&server);
    let id = job_id();
    let command = "echo \"uid $(id -u) gid $(id -g) groups $(id -G)\"; echo \"pwd $(pwd)\"; env | sed 's/^/env /'";
    server.set_jobs(vec![job(&id, command, 60, json!({ "GREETING": "hello world", "CI": "true" }))]);

    let end = finished(&server, &agent, &id, Duration::from_secs(20));
    assert_eq!(end["exit_code"], 0, "{}", server.output(&id));
    let output = server.output(&id);
    let workdir = jobs_dir.join(&id);
    let expected_ids = format!("uid {uid} gid {gid} groups {gid}", uid = user.uid, gid = user.gid);
    assert!(output.lines().any(|l| l == expected_ids), "not the job user's ids alone: {output}");
    assert!(output.lines().any(|l| l == format!("pwd {}", workdir.display())), "{output}");

    let env: BTreeMap<&str, &str> =
        output.lines().filter_map(|l| l.strip_prefix("env ")).filter_map(|l| l.split_once('=')).collect();
    let workdir = workdir.display().to_string();
    let expected: BTreeMap<&str, &str> = [
        // What the job asked for...
        ("GREETING", "hello world"),
        ("CI", "true"),
        // ...and the documented minimal set (deploy/agent/README.md, "Jobs")...
        ("PATH", "/usr/local/bin:/usr/bin:/bin"),
        ("HOME", workdir.as_str()),
        ("USER", JOB_USER),
        ("LOGNAME", JOB_USER),
        ("FLEETYARD_JOB_ID", id.as_str()),
        ("FLEETYARD_JOB_ATTEMPT", "1"),
        // ...and PWD, which /bin/sh sets itself.
        ("PWD", workdir.as_str()),
    ]
    .into_iter()
    .collect();
    assert_eq!(env, expected, "the job's environment is exactly what it asked for and the documented set");

    assert!(!jobs_dir.join(&id).exists(), "the working directory outlived the job");
    assert!(!agent.jobs_record(&id).exists(), "the job's record outlived it");
    let mode = std::fs::metadata(&jobs_dir).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o711, "the jobs directory lets the job user reach its own directory only");
}

#[test]
fn a_job_can_neither_read_the_credential_nor_write_the_agents_state() {
    let server = Fleetyard::start();
    let (agent, _, jobs_dir) = isolated(&server);
    // The agent has saved its work by the time a job runs.
    let state = agent.state_dir.display().to_string();
    let command = format!(
        "cat {state}/credential.json && echo READ-CREDENTIAL; \
         echo '{{}}' > {state}/work.json && echo WROTE-WORK; \
         ls {state} && echo LISTED-STATE; \
         touch {state}/planted && echo PLANTED-STATE; \
         touch {jobs}/planted && echo PLANTED-JOBS-DIR; \
         echo >> /etc/ssh/sshd_config && echo WROTE-SSHD-CONFIG; \
         exit 0",
        jobs = jobs_dir.display()
    );
    let id = job_id();
    server.set_jobs(vec![job(&id, &command, 60, json!({}))]);

    let end = finished(&server, &agent, &id, Duration::from_secs(20));
    assert_eq!(end["exit_code"], 0);
    let output = server.output(&id);
    assert!(!output.contains(common::CREDENTIAL), "the job read the credential: {output}");
    for marker in
        ["READ-CREDENTIAL", "WROTE-WORK", "LISTED-STATE", "PLANTED-STATE", "PLANTED-JOBS-DIR", "WROTE-SSHD-CONFIG"]
    {
        assert!(!output.contains(marker), "{marker}: {output}");
    }
    assert!(output.contains("Permission denied"), "{output}");
    let work = std::fs::read_to_string(agent.state_dir.join("work.json")).unwrap();
    assert!(work.contains("\"version\""), "work.json was overwritten: {work}");
    assert!(!agent.state_dir.join("planted").exists() && !jobs_dir.join("planted").exists());
    let meta = std::fs::metadata(&agent.state_dir).unwrap();
    assert_eq!((meta.mode() & 0o777, meta.uid()), (0o700, 0), "the state directory is the agent's alone");
}

#[test]
fn a_daemon_a_job_leaves_behind_dies_when_the_job_ends() {
    let server = Fleetyard::start();
    let (agent, user, _) = isolated(&server);
    let id = job_id();
    server.set_jobs(vec![job(&id, &format!("{DAEMON}sleep 3; echo done"), 60, json!({}))]);

    let daemon = printed_pid(&server, &agent, &id, "daemon ");
    let cgroup = cgroup_of(daemon);
    assert!(cgroup.ends_with(format!("fleetyard-job-{id}-1")), "the job runs in a cgroup of its own: {cgroup:?}");
    let owner = std::fs::read_to_string(format!("/proc/{daemon}/status")).unwrap();
    assert!(owner.lines().any(|l| l.starts_with("Uid:") && l.contains(&user.uid.to_string())), "{owner}");
    // The daemon holds the job's output pipe open: the job still ends when its shell does.
    let end = finished(&server, &agent, &id, Duration::from_secs(15));
    assert_eq!(end["exit_code"], 0);
    assert!(server.output(&id).ends_with("done\n"));
    assert!(gone_within(daemon, Duration::from_secs(5)), "the daemon {daemon} outlived its job");
    assert!(!cgroup.exists(), "the job's cgroup outlived it");
}

#[test]
fn a_daemon_a_job_leaves_behind_dies_at_the_jobs_timeout() {
    let server = Fleetyard::start();
    let (agent, _, jobs_dir) = isolated(&server);
    let id = job_id();
    server.set_jobs(vec![job(&id, &format!("{DAEMON}sleep 1000"), 2, json!({}))]);

    let daemon = printed_pid(&server, &agent, &id, "daemon ");
    let end = finished(&server, &agent, &id, Duration::from_secs(20));
    assert_eq!(end["timed_out"], true, "{end}");
    assert!(gone_within(daemon, Duration::from_secs(5)), "the daemon {daemon} outlived the timeout");
    assert!(!jobs_dir.join(&id).exists());
}

#[test]
fn a_cancelled_job_takes_its_daemon_with_it_and_reports_nothing() {
    let server = Fleetyard::start();
    let (agent, _, jobs_dir) = isolated(&server);
    let id = job_id();
    server.set_jobs(vec![job(&id, &format!("{DAEMON}echo \"shell $$\"; sleep 1000"), 600, json!({}))]);

    let daemon = printed_pid(&server, &agent, &id, "daemon ");
    let shell = printed_pid(&server, &agent, &id, "shell ");
    assert!(alive(daemon) && alive(shell));
    server.set_jobs(Vec::new());
    assert!(gone_within(shell, Duration::from_secs(10)), "the cancelled job's shell {shell} still runs");
    assert!(gone_within(daemon, Duration::from_secs(10)), "the cancelled job's daemon {daemon} still runs");
    let removed = server.wait_for(Duration::from_secs(10), |_| (!jobs_dir.join(&id).exists()).then_some(()));
    assert!(removed.is_some(), "the cancelled job's working directory is still there");
    assert!(server.finished(&id).is_none(), "a cancelled job is not reported");
}

#[test]
fn an_agent_restarted_after_a_crash_ends_the_job_the_last_one_left_running() {
    let server = Fleetyard::start();
    let (mut agent, _, jobs_dir) = isolated(&server);
    let id = job_id();
    server.set_jobs(vec![job(&id, &format!("{DAEMON}echo \"shell $$\"; sleep 1000"), 600, json!({}))]);
    let daemon = printed_pid(&server, &agent, &id, "daemon ");
    let shell = printed_pid(&server, &agent, &id, "shell ");

    agent.crash();
    assert!(alive(daemon) && alive(shell), "the job runs on without its agent");
    assert!(agent.jobs_record(&id).exists(), "the running job is recorded");
    // Meanwhile the server has given the attempt up.
    server.set_jobs(Vec::new());
    agent.start();
    assert!(gone_within(shell, Duration::from_secs(15)), "the leftover shell {shell} still runs");
    assert!(gone_within(daemon, Duration::from_secs(5)), "the leftover daemon {daemon} still runs");
    let cleared = server.wait_for(Duration::from_secs(10), |_| {
        (!jobs_dir.join(&id).exists() && !agent.jobs_record(&id).exists()).then_some(())
    });
    assert!(cleared.is_some(), "the leftover's working directory or record is still there:\n{}", agent.log());
}

#[test]
fn an_agent_that_cannot_become_the_job_user_refuses_every_job_saying_why() {
    must_be_root();
    account(JOB_USER, false);
    // The agent itself runs as an unprivileged account, without capabilities; its binary is
    // copied where that account can run it.
    let runner = account("fy-agent-noprivs", false);
    let server = Fleetyard::start();
    let agent = Agent::new(&server, &format!("job_user = {JOB_USER:?}"));
    let binary = agent.base.path.join("fleetyard-agent");
    std::fs::copy(common::AGENT, &binary).unwrap();
    let jobs_dir = agent.base.path.join("jobs");
    let config = std::fs::read_to_string(&agent.config).unwrap();
    std::fs::write(&agent.config, format!("{config}jobs_dir = {:?}\n", jobs_dir.display().to_string())).unwrap();
    for path in [&agent.state_dir, &agent.state_dir.join("credential.json"), &agent.config] {
        rustix::fs::chown(
            path,
            Some(rustix::fs::Uid::from_raw(runner.uid)),
            Some(rustix::fs::Gid::from_raw(runner.gid)),
        )
        .unwrap();
    }
    let log = std::fs::File::create(agent.base.path.join("agent.log")).unwrap();
    let mut child = {
        use std::os::unix::process::CommandExt;
        std::process::Command::new(&binary)
            .arg("--config")
            .arg(&agent.config)
            .arg("run")
            .uid(runner.uid)
            .gid(runner.gid)
            .stderr(log)
            .spawn()
            .unwrap()
    };
    let id = job_id();
    server.set_jobs(vec![job(&id, "echo ran", 60, json!({}))]);

    let end = server.wait_for(Duration::from_secs(20), |s| s.finished.get(&id).cloned());
    let _ = child.kill();
    let _ = child.wait();
    let end = end.unwrap_or_else(|| panic!("no report; agent log:\n{}", agent.log()));
    assert_eq!(end["exit_code"], 127);
    let output = server.output(&id);
    assert!(!output.lines().any(|l| l == "ran"), "{output}");
    assert!(output.contains("runs no jobs") && output.contains("CAP_SETUID"), "{output}");
    let log = agent.log();
    assert_eq!(log.matches("refuses every job").count(), 1, "said once, at start: {log}");
}
