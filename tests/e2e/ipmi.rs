//! The IPMI collector against a real BMC: OpenIPMI's `ipmi_sim` over RMCP+ on 127.0.0.1
//! (fixture: tests/fixtures/ipmi, harness: tests/src/ipmi.rs). Each test starts its own sim.

use std::net::UdpSocket;
use std::time::{Duration, Instant};

use muster::pb;
use muster_agent::collect::ipmi::{BmcEndpoint, IpmiCollector, IpmiError, IpmiSnapshot};
use muster_tests::ipmi::{self as sim, IpmiSim};

const TIMEOUT: Duration = Duration::from_secs(2);

fn collector(s: &IpmiSim) -> IpmiCollector {
    let ep = BmcEndpoint::parse(&s.endpoint(), Some(s.password())).unwrap();
    IpmiCollector::new(ep, TIMEOUT)
}

fn sensor<'a>(snap: &'a IpmiSnapshot, name: &str) -> &'a pb::Sensor {
    snap.sensors
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no sensor {name:?} in {:#?}", snap.sensors))
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-6
}

#[test]
fn sensors_fru_firmware_and_power() {
    let s = IpmiSim::start().unwrap();
    let mut c = collector(&s);
    let snap = c.collect().unwrap();

    assert_eq!(snap.firmware.as_deref(), Some(sim::FIRMWARE));
    assert_eq!(snap.power, pb::PowerState::PowerOn);
    let names: Vec<&str> = snap.sensors.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "CPU Temp",
            "Fan1",
            "PSU1 Vin 12v",
            "PSU1 Status",
            "DIMM A1 ecc"
        ]
    );

    let cpu = sensor(&snap, "CPU Temp");
    assert_eq!(cpu.r#type, "temperature");
    assert!(close(cpu.value, 45.0), "{cpu:?}");
    assert_eq!(cpu.unit, "C");
    assert_eq!(cpu.state, "ok");
    assert_eq!(cpu.upper_non_critical, Some(75.0));
    assert_eq!(cpu.upper_critical, Some(85.0));
    assert_eq!(cpu.lower_critical, None);
    assert_eq!(cpu.lower_non_critical, None);

    let fan = sensor(&snap, "Fan1");
    assert_eq!(fan.r#type, "fan");
    assert!(close(fan.value, 4800.0), "{fan:?}");
    assert_eq!(fan.unit, "RPM");
    assert_eq!(fan.state, "ok");
    assert_eq!(fan.lower_critical, Some(500.0));
    assert_eq!(fan.lower_non_critical, Some(1000.0));
    assert_eq!(fan.upper_critical, None);

    let v = sensor(&snap, "PSU1 Vin 12v");
    assert_eq!(v.r#type, "voltage");
    assert!(close(v.value, 12.0), "{v:?}");
    assert_eq!(v.unit, "V");
    assert_eq!(v.state, "ok");
    assert!(close(v.lower_critical.unwrap(), 10.8), "{v:?}");
    assert!(close(v.upper_critical.unwrap(), 13.2), "{v:?}");
    assert_eq!(v.upper_non_critical, None);

    let psu = sensor(&snap, "PSU1 Status");
    assert_eq!(psu.r#type, "power_supply");
    assert_eq!(psu.asserted, ["presence detected"]);
    assert_eq!(psu.state, "ok");

    let mem = sensor(&snap, "DIMM A1 ecc");
    assert_eq!(mem.r#type, "memory");
    assert!(mem.asserted.is_empty(), "{mem:?}");
    assert_eq!(mem.state, "ok");

    let fru = snap.fru.expect("FRU");
    assert_eq!(fru.manufacturer, sim::FRU_MANUFACTURER);
    assert_eq!(fru.product, sim::FRU_PRODUCT);
    assert_eq!(fru.serial, sim::FRU_SERIAL);
    assert_eq!(fru.part_number, sim::FRU_PART_NUMBER);
    assert_eq!(fru.board_serial, sim::FRU_BOARD_SERIAL);

    s.power_off().unwrap();
    assert_eq!(c.collect().unwrap().power, pb::PowerState::PowerOff);
    s.power_on().unwrap();
    assert_eq!(c.collect().unwrap().power, pb::PowerState::PowerOn);
}

#[test]
fn sel_is_incremental_and_notices_a_clear() {
    let s = IpmiSim::start().unwrap();
    let mut c = collector(&s);

    let first = c.collect().unwrap();
    assert!(!first.sel_reset);
    let got: Vec<(&str, &str, &str, &str, bool)> = first
        .new_sel
        .iter()
        .map(|e| {
            (
                e.sensor_type.as_str(),
                e.sensor.as_str(),
                e.event.as_str(),
                e.severity.as_str(),
                e.asserted,
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            (
                "temperature",
                "CPU Temp",
                "upper critical going high",
                "critical",
                true
            ),
            (
                "power_supply",
                "PSU1 Status",
                "power supply failure detected",
                "critical",
                true
            ),
            ("memory", "DIMM A1 ecc", "correctable ECC", "warning", true),
        ]
    );
    let ids: Vec<u32> = first.new_sel.iter().map(|e| e.record_id).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "oldest first: {ids:?}");
    assert_eq!(c.sel_cursor().map(u32::from), ids.last().copied());
    // ipmi_sim stamps records with its uptime (pre-init time): no wall-clock time then.
    assert!(first.new_sel.iter().all(|e| e.time.is_none()));

    let second = c.collect().unwrap();
    assert!(second.new_sel.is_empty(), "{:?}", second.new_sel);
    assert!(!second.sel_reset);

    s.add_ecc_event().unwrap();
    let third = c.collect().unwrap();
    assert_eq!(third.new_sel.len(), 1, "{:?}", third.new_sel);
    let e = &third.new_sel[0];
    assert_eq!(e.sensor_type, "memory");
    assert_eq!(e.sensor, "DIMM A1 ecc");
    assert_eq!(e.event, "uncorrectable ECC");
    assert_eq!(e.severity, "critical");
    assert!(e.asserted);
    assert!(e.record_id > *ids.last().unwrap());
    assert!(!third.sel_reset);
    assert!(c.collect().unwrap().new_sel.is_empty());

    // A persisted cursor carries over to a new collector (agent restart).
    let mut restarted = collector(&s);
    restarted.set_sel_cursor(c.sel_cursor());
    let after_restart = restarted.collect().unwrap();
    assert!(after_restart.new_sel.is_empty());
    assert!(!after_restart.sel_reset);

    // Cleared: reported once, with the (empty) current SEL.
    s.clear_sel().unwrap();
    let cleared = c.collect().unwrap();
    assert!(cleared.sel_reset);
    assert!(cleared.new_sel.is_empty(), "{:?}", cleared.new_sel);
    let again = c.collect().unwrap();
    assert!(!again.sel_reset);
    assert!(again.new_sel.is_empty());

    // Cleared and refilled between two collections: reset, and the whole new SEL.
    s.add_ecc_event().unwrap();
    assert_eq!(c.collect().unwrap().new_sel.len(), 1);
    s.clear_sel().unwrap();
    s.add_ecc_event().unwrap();
    let refilled = c.collect().unwrap();
    assert!(refilled.sel_reset);
    assert_eq!(refilled.new_sel.len(), 1, "{:?}", refilled.new_sel);
    assert_eq!(refilled.new_sel[0].event, "uncorrectable ECC");
}

#[test]
fn fan_below_threshold_is_critical_then_recovers() {
    let s = IpmiSim::start().unwrap();
    let mut c = collector(&s);
    c.collect().unwrap();

    s.fan_fail().unwrap();
    let snap = c.collect().unwrap();
    let fan = sensor(&snap, "Fan1");
    assert!(close(fan.value, 250.0), "{fan:?}");
    assert_eq!(fan.state, "critical");
    // The crossing was logged by the BMC.
    let events: Vec<(&str, &str)> = snap
        .new_sel
        .iter()
        .filter(|e| e.sensor == "Fan1")
        .map(|e| (e.event.as_str(), e.severity.as_str()))
        .collect();
    assert!(
        events.contains(&("lower critical going low", "critical")),
        "{events:?}"
    );
    assert!(
        events.contains(&("lower non-critical going low", "warning")),
        "{events:?}"
    );

    s.fan_ok().unwrap();
    let snap = c.collect().unwrap();
    let fan = sensor(&snap, "Fan1");
    assert!(close(fan.value, 4800.0), "{fan:?}");
    assert_eq!(fan.state, "ok");

    s.cpu_hot().unwrap();
    let snap = c.collect().unwrap();
    assert_eq!(sensor(&snap, "CPU Temp").state, "critical");
    s.cpu_ok().unwrap();
    let snap = c.collect().unwrap();
    assert_eq!(sensor(&snap, "CPU Temp").state, "ok");
}

#[test]
fn psu_and_memory_faults_make_discrete_sensors_critical() {
    let s = IpmiSim::start().unwrap();
    let mut c = collector(&s);
    c.collect().unwrap();

    s.psu_fail().unwrap();
    let snap = c.collect().unwrap();
    let psu = sensor(&snap, "PSU1 Status");
    assert_eq!(psu.state, "critical");
    assert_eq!(psu.asserted, ["presence detected", "failure detected"]);

    s.psu_ok().unwrap();
    let snap = c.collect().unwrap();
    let psu = sensor(&snap, "PSU1 Status");
    assert_eq!(psu.state, "ok");
    assert_eq!(psu.asserted, ["presence detected"]);

    s.memory_fail().unwrap();
    let snap = c.collect().unwrap();
    let mem = sensor(&snap, "DIMM A1 ecc");
    assert_eq!(mem.state, "critical");
    assert_eq!(mem.asserted, ["uncorrectable ECC"]);
}

#[test]
fn wrong_password_is_an_authentication_error() {
    let s = IpmiSim::start().unwrap();
    let ep = BmcEndpoint::parse(&s.endpoint(), Some("not-the-password".into())).unwrap();
    let mut c = IpmiCollector::new(ep, TIMEOUT);
    let err = c.collect().unwrap_err();
    assert!(matches!(err, IpmiError::AuthFailed { .. }), "{err:?}");
    assert!(
        err.to_string()
            .contains("authentication failed for user admin"),
        "{err}"
    );
}

/// A UDP socket that receives and never answers.
fn silent_bmc() -> (UdpSocket, String) {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let spec = format!(
        "rmcp://admin@127.0.0.1:{}",
        sock.local_addr().unwrap().port()
    );
    (sock, spec)
}

#[test]
fn silent_bmc_errors_within_a_bound() {
    let (_sock, spec) = silent_bmc();
    let timeout = Duration::from_millis(500);
    let mut c = IpmiCollector::new(
        BmcEndpoint::parse(&spec, Some("x".into())).unwrap(),
        timeout,
    );
    for _ in 0..3 {
        let t = Instant::now();
        let err = c.collect().unwrap_err();
        let took = t.elapsed();
        assert!(took < timeout * 4, "took {took:?}");
        assert!(matches!(err, IpmiError::Timeout { .. }), "{err:?}");
        assert!(
            err.to_string().contains("did not answer within 500ms"),
            "{err}"
        );
    }
}

/// A BMC that stops answering mid-session: the kept session's next collection fails within a
/// bound too (stale-session retry included).
#[test]
fn bmc_that_stops_answering_mid_session() {
    let mut s = Some(IpmiSim::start().unwrap());
    let ep =
        BmcEndpoint::parse(&s.as_ref().unwrap().endpoint(), Some(sim::PASSWORD.into())).unwrap();
    let timeout = Duration::from_millis(500);
    let mut c = IpmiCollector::new(ep, timeout);
    c.collect().unwrap();
    let port = s.as_ref().unwrap().rmcp_port();
    drop(s.take());
    // Something silent on the same port now (the sim is gone).
    let _silent = UdpSocket::bind(("127.0.0.1", port)).unwrap();
    let t = Instant::now();
    assert!(c.collect().is_err());
    assert!(t.elapsed() < timeout * 4, "took {:?}", t.elapsed());
}

/// Runs the thread-count check in a child test process, alone, so that other tests' threads
/// cannot move the count.
#[test]
fn silent_bmc_leaves_no_threads_behind() {
    let exe = std::env::current_exe().unwrap();
    let out = std::process::Command::new(exe)
        .args([
            "ipmi::thread_probe",
            "--exact",
            "--test-threads=1",
            "--nocapture",
        ])
        .env("MUSTER_IPMI_THREAD_PROBE", "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("1 passed"), "{stdout}");
    assert!(stdout.contains("probe: threads"), "{stdout}");
}

fn threads() -> usize {
    std::fs::read_dir("/proc/self/task").unwrap().count()
}

#[test]
fn thread_probe() {
    if std::env::var_os("MUSTER_IPMI_THREAD_PROBE").is_none() {
        return;
    }
    let (_sock, spec) = silent_bmc();
    let timeout = Duration::from_millis(200);
    let mut c = IpmiCollector::new(
        BmcEndpoint::parse(&spec, Some("x".into())).unwrap(),
        timeout,
    );
    let before = threads();
    for _ in 0..5 {
        let t = Instant::now();
        assert!(c.collect().is_err());
        assert!(t.elapsed() < timeout * 4);
    }
    let after = threads();
    println!("probe: threads before {before}, after {after}");
    assert_eq!(before, after);
}
