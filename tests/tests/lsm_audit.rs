//! `lsm_denied` named by the LSM itself: with kernel auditing on (for this test only),
//! Landlock reports its denial in an audit record, which sshtrace reads from the audit
//! multicast group and joins to the denied sshd process.

use sshtrace_tests::{
    kernel::{self, Evidence},
    privileged, AuditOn, Endpoint, Sshd, SshdOptions, Tracer, SYSTEM_DIRS,
};

#[test]
fn landlock_audit_record_names_the_denial() {
    if !privileged("landlock_audit_record_names_the_denial")
        || !kernel::landlock("landlock_audit_record_names_the_denial")
    {
        return;
    }
    let _audit = AuditOn::new();
    let ep = Endpoint::new(150);
    let tracer = Tracer::start(&["--port", &ep.port().to_string()]);
    let sshd = Sshd::start(
        "ll-audit",
        ep,
        SshdOptions {
            env: vec![("SSHTRACE_TEST_LANDLOCK".into(), SYSTEM_DIRS.into())],
            preload: Some("crash_preload.c"),
            ..Default::default()
        },
    );
    assert!(!sshd.ssh("true").status.success());

    let v = tracer.verdict_for(ep.port(), |v| v["cause"] == "lsm_denied");
    // Checked after, not waited for before: sshtrace listens before it reports `attached`.
    tracer.wait_stderr("the audit listener", |l| {
        l.contains("audit records: listening") && !l.contains("disabled")
    });
    assert_eq!(v["details"]["lsm"], "landlock");
    if !kernel::expect(
        "landlock_audit_record_names_the_denial",
        Evidence::LandlockAuditRecords,
        "lsm_denied decided by the errno and the active-LSM set (Landlock writes no record)",
    ) {
        assert_eq!(v["details"]["decided_by"], "errno and the active-LSM set");
        return;
    }
    assert_eq!(v["details"]["decided_by"], "lsm_report");
    assert_eq!(v["details"]["source"], "audit");
    assert_eq!(v["details"]["blockers"], "fs.read_file");
    assert_eq!(
        v["details"]["path"],
        sshd.path("host_key").display().to_string()
    );
    let report = sshtrace_tests::evidence(&v, "lsm_denial");
    assert_eq!(report["pid"], v["details"]["denied_pid"]);
}
