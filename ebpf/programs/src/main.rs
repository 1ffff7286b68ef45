//! sluice's eBPF programs: one object, one module per hook family, every map in `maps.rs`.
#![no_std]
#![no_main]

mod addr;
mod connect;
mod getsockopt;
mod maps;
mod quota;
mod skmsg;
mod sockops;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier proves that no program can reach a panic; this only satisfies the linker.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
