//! The foundation's proof of the chain: `sluice run` attaches connect4 to one cgroup; a process
//! in it is redirected (to sluice's own proxy, which refuses it while the original-destination
//! lookup is not wired to the datapath), a process outside it is not.

use std::process::Output;

use crate::{
    agent::AgentProcess, cgroup::TestCgroup, privileged, responder::Responder, unique_name,
};

fn curl(cmd: &mut std::process::Command, url: &str) -> Result<String, String> {
    let Output {
        status,
        stdout,
        stderr,
    } = cmd
        .args(["-sS", "--noproxy", "*", "--max-time", "5", url])
        .output()
        .unwrap_or_else(|e| panic!("running curl: {e}"));
    if !status.success() {
        return Err(format!("{status}: {}", String::from_utf8_lossy(&stderr)));
    }
    Ok(String::from_utf8_lossy(&stdout).into_owned())
}

fn free_port() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
    listener
        .local_addr()
        .unwrap_or_else(|e| panic!("{e}"))
        .to_string()
}

#[test]
fn connect4_redirects_only_the_attached_cgroup() {
    if !privileged("connect4_redirects_only_the_attached_cgroup") {
        return;
    }
    let proxy_addr = free_port();
    let origin = Responder::start("127.0.0.2:0", "origin");
    let top = TestCgroup::new(&unique_name("redirect"));
    let pods = top.child("pods");
    let outside = top.child("outside");

    let _agent = AgentProcess::start(&[
        "run",
        "--cgroup",
        &pods.path().to_string_lossy(),
        "--proxy-addr",
        &proxy_addr,
        "--admin-addr",
        "127.0.0.1:0",
        "--intercept",
        &origin.addr().to_string(),
    ]);

    let url = format!("http://{}/", origin.addr());
    let redirected = curl(&mut pods.command("curl"), &url);
    assert!(
        redirected.is_err(),
        "in the attached cgroup: redirected to the proxy, which refuses what it cannot attribute: {redirected:?}"
    );
    assert_eq!(
        curl(&mut outside.command("curl"), &url).as_deref(),
        Ok("origin"),
        "in a sibling cgroup"
    );
    assert_eq!(origin.hits(), 1, "only the sibling reached the origin");
}
