//! The foundation's proof of the chain: `sluice run` attaches connect4 to one cgroup; a process
//! in it is redirected, a process outside it is not.

use std::process::Output;

use crate::{
    agent::AgentProcess, cgroup::TestCgroup, privileged, responder::Responder, unique_name,
};

fn curl(cmd: &mut std::process::Command, url: &str) -> String {
    let Output {
        status,
        stdout,
        stderr,
    } = cmd
        .args(["-sS", "--noproxy", "*", "--max-time", "5", url])
        .output()
        .unwrap_or_else(|e| panic!("running curl: {e}"));
    assert!(
        status.success(),
        "curl {url}: {status}: {}",
        String::from_utf8_lossy(&stderr)
    );
    String::from_utf8_lossy(&stdout).into_owned()
}

#[test]
fn connect4_redirects_only_the_attached_cgroup() {
    if !privileged("connect4_redirects_only_the_attached_cgroup") {
        return;
    }
    let proxy = Responder::start("127.0.0.1:0", "proxy");
    let origin = Responder::start("127.0.0.2:0", "origin");
    let top = TestCgroup::new(&unique_name("redirect"));
    let pods = top.child("pods");
    let outside = top.child("outside");

    let _agent = AgentProcess::start(&[
        "run",
        "--cgroup",
        &pods.path().to_string_lossy(),
        "--proxy-addr",
        &proxy.addr().to_string(),
        "--intercept",
        &origin.addr().to_string(),
    ]);

    let url = format!("http://{}/", origin.addr());
    assert_eq!(
        curl(&mut pods.command("curl"), &url),
        "proxy",
        "in the attached cgroup"
    );
    assert_eq!(
        curl(&mut outside.command("curl"), &url),
        "origin",
        "in a sibling cgroup"
    );
    assert_eq!((proxy.hits(), origin.hits()), (1, 1));
}
