//! The allocator both services run on (mimalloc) and its memory defaults.
//!
//! mimalloc instead of glibc malloc: malloc/free was ~23 % of each service's CPU in the
//! profiles of docs/benchmarks.md, and glibc's arenas kept the ingress's RSS up after bursts.
//!
//! Left at its own defaults, mimalloc keeps freed memory for reuse and returns it to the OS
//! only after a purge delay (1 s in mimalloc 3), and on Linux it commits its arenas up front, so
//! a purge only marks pages reusable instead of dropping them from the resident set. For small
//! requests that is fast and harmless. With large bodies it is not: at eight concurrent 1 MiB
//! requests every hop allocates and frees several MiB per request, and the blocks freed in the
//! last second stayed resident — the proxy peaked at ~120 MiB and the ingress at ~85 MiB with
//! ~35 MiB live (docs/benchmarks.md, "Forwarding"). The defaults here return memory within
//! 10 ms and commit arena memory as it is used, which kept both under 50 MiB for that load.
//!
//! Each default yields to its `MIMALLOC_*` environment variable, so an operator can trade
//! memory for CPU again (e.g. `MIMALLOC_PURGE_DELAY=1000`) without a rebuild.
//!
//! Why before `main`: mimalloc reserves its first arena at the first allocation, which Rust's
//! runtime makes before `main` runs, and whether an arena is committed up front is decided
//! when it is reserved. [`bounded_mimalloc!`](crate::bounded_mimalloc) therefore registers
//! [`apply_defaults`] as an ELF constructor (`.init_array`), which runs before any of that.

use std::ffi::{CStr, c_long};

use libmimalloc_sys::mi_option_t;

/// The allocator type the services install (through [`bounded_mimalloc!`](crate::bounded_mimalloc)).
#[doc(hidden)]
pub use mimalloc::MiMalloc;

/// `mi_option_arena_eager_commit` in mimalloc's `mi_option_e` (the enum keeps retired
/// entries, so positions are stable; libmimalloc-sys names only some of them).
const ARENA_EAGER_COMMIT: mi_option_t = 4;
/// `mi_option_purge_delay` in mimalloc's `mi_option_e`.
const PURGE_DELAY: mi_option_t = 15;

/// The defaults [`apply_defaults`] sets: option, its environment variable, value.
const DEFAULTS: [(mi_option_t, &CStr, c_long); 2] = [
    // Commit arena memory as it is used, so that a purge decommits it (MADV_DONTNEED).
    (ARENA_EAGER_COMMIT, c"MIMALLOC_ARENA_EAGER_COMMIT", 0),
    // Return freed memory after 10 ms instead of 1 s. With 1 MiB bodies this cost ~10 % more
    // CPU per request than 1 s; 0 saved a few MiB more but cost ~40 %.
    (PURGE_DELAY, c"MIMALLOC_PURGE_DELAY", 10),
];

/// Makes each of [`DEFAULTS`] mimalloc's default for its option. mimalloc still reads its
/// environment variables (any spelling it accepts) and they win; `mi_option_set_default`
/// changes only an option not set from the environment or by a call, whether mimalloc has
/// read its environment yet or not. Meant for the constructor [`bounded_mimalloc!`](crate::bounded_mimalloc)
/// registers, before any other thread exists.
#[doc(hidden)]
pub extern "C" fn apply_defaults() {
    for (option, _, value) in DEFAULTS {
        // SAFETY: stores a value in mimalloc's static option table (which exists before
        // mimalloc is initialised); any value is valid for these two options. Called before
        // main, when no other thread can read the table.
        unsafe { libmimalloc_sys::mi_option_set_default(option, value) };
    }
}

/// The effective settings as (environment variable, value), for the startup log.
pub fn settings() -> Vec<(&'static str, i64)> {
    DEFAULTS
        .iter()
        .map(|(option, variable, _)| {
            // SAFETY: reads mimalloc's option table.
            let value = unsafe { libmimalloc_sys::mi_option_get(*option) };
            (variable.to_str().unwrap_or("?"), value as i64)
        })
        .collect()
}

/// Makes mimalloc the binary's global allocator with this module's memory defaults applied
/// before the first allocation. Use it once, in the binary crate (`shared::bounded_mimalloc!();`
/// at the top level of `main.rs`): a constructor in a library can be dropped by the linker.
#[macro_export]
macro_rules! bounded_mimalloc {
    () => {
        #[global_allocator]
        static ALLOCATOR: $crate::allocator::MiMalloc = $crate::allocator::MiMalloc;

        /// Runs [`shared::allocator::apply_defaults`] before Rust's runtime allocates.
        #[cfg(target_os = "linux")]
        #[used]
        #[unsafe(link_section = ".init_array")]
        static APPLY_ALLOCATOR_DEFAULTS: extern "C" fn() = $crate::allocator::apply_defaults;
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_option_positions_are_mimallocs() {
        // libmimalloc-sys's own constants for the neighbours of the two unnamed options: a
        // libmimalloc-sys release that renumbered them (following mimalloc) fails here.
        assert_eq!(
            libmimalloc_sys::mi_option_large_os_pages,
            ARENA_EAGER_COMMIT + 2
        );
        assert_eq!(libmimalloc_sys::mi_option_use_numa_nodes, PURGE_DELAY + 1);
    }

    #[test]
    fn applying_the_defaults_sets_them_unless_the_environment_does() {
        // This test binary has no constructor; apply them now (only the option table matters).
        apply_defaults();
        for (variable, value) in settings() {
            let wanted = match variable {
                "MIMALLOC_ARENA_EAGER_COMMIT" => 0,
                "MIMALLOC_PURGE_DELAY" => 10,
                other => panic!("unexpected setting {other}"),
            };
            if std::env::var_os(variable).is_none() {
                assert_eq!(value, wanted, "{variable}");
            }
        }
    }
}
