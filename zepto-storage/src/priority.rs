//! Thread priorities: the ingest path yields the cores to queries.
//!
//! On 2 cores a steady ingest keeps about one busy (decode, WAL, compaction); a query that
//! wakes up while both cores run ingest work would wait its turn. Threads that only do
//! ingest and background work lower their own priority, so the scheduler runs a query
//! first and gives the ingest path whatever the queries leave. Ingest is not starved: a
//! niceness of 10 still gets about a tenth of a contended core, and all of an idle one.
//!
//! Niceness alone was not enough (measured, docs/benchmarks.md): the Linux scheduler lets
//! a running thread finish its protected time slice (about 1.4 ms on 2 cores) before a
//! waking thread of any weight takes the core. So the lowered threads also ask for a long
//! slice; a waking query thread, with the default shorter one, then preempts them at once
//! (EEVDF custom slices and `PREEMPT_SHORT`, Linux 6.12+; older kernels ignore the slice).

/// The time slice the lowered threads ask for: longer than the kernel's default.
#[cfg(target_os = "linux")]
const BACKGROUND_SLICE_NS: u64 = 6_000_000;

/// Add `nice` to the calling thread's niceness (lower its priority) and give it a long time
/// slice; `0` does nothing. Raising a priority back needs privileges, so a thread that
/// lowered its own stays lowered: call this only on threads that do nothing but ingest or
/// background work. A failure is logged, not returned: the thread still works, at normal
/// priority.
pub fn lower_current_thread(nice: i32) {
    if nice <= 0 {
        return;
    }
    #[cfg(target_os = "linux")]
    {
        let want = (current_thread_nice() + nice).min(19);
        if set_current(want, BACKGROUND_SLICE_NS) {
            return;
        }
        // Refused (a sandbox filtering sched_setattr): niceness alone.
        // SAFETY: gettid has no preconditions; setpriority only changes the calling
        // thread's niceness (an out-of-range value is clamped by the kernel).
        let rc =
            unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, want) };
        if rc != 0 {
            tracing::warn!(
                error = %std::io::Error::last_os_error(),
                nice = want,
                "cannot lower this thread's priority; it keeps it"
            );
        }
    }
}

/// `sched_setattr` of the calling thread: SCHED_OTHER at `nice` with a time slice of
/// `slice_ns`. False when the kernel refused.
#[cfg(target_os = "linux")]
fn set_current(nice: i32, slice_ns: u64) -> bool {
    let attr = libc::sched_attr {
        size: std::mem::size_of::<libc::sched_attr>() as u32,
        sched_policy: libc::SCHED_OTHER as u32,
        sched_flags: 0,
        sched_nice: nice,
        sched_priority: 0,
        sched_runtime: slice_ns,
        sched_deadline: 0,
        sched_period: 0,
    };
    // SAFETY: `attr` is a valid, fully initialised sched_attr of the size it states and
    // outlives the call, which only reads it; pid 0 is the calling thread.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_sched_setattr,
            0,
            &attr as *const libc::sched_attr,
            0u32,
        )
    };
    rc == 0
}

/// The calling thread's niceness (Linux; `0` elsewhere).
pub fn current_thread_nice() -> i32 {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: gettid has no preconditions; getpriority only reads. It cannot fail for
        // the calling thread (its -1 would be the niceness -1).
        unsafe { libc::getpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t) }
    }
    #[cfg(not(target_os = "linux"))]
    {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_lowers_only_its_own_priority() {
        let before = current_thread_nice();
        let (inside, outside) = std::thread::spawn(move || {
            lower_current_thread(5);
            (current_thread_nice(), before)
        })
        .join()
        .unwrap_or((0, 0));
        if cfg!(target_os = "linux") {
            assert_eq!(inside, (outside + 5).min(19));
        }
        assert_eq!(
            current_thread_nice(),
            before,
            "the calling thread kept its priority"
        );
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_lowered_thread_asks_for_the_long_slice() {
        let slice = std::thread::spawn(|| {
            lower_current_thread(1);
            // /proc/thread-self/sched shows `se.slice` on kernels that have custom slices.
            std::fs::read_to_string("/proc/thread-self/sched")
                .ok()
                .and_then(|s| {
                    s.lines()
                        .find(|l| l.starts_with("se.slice"))
                        .and_then(|l| l.split(':').nth(1))
                        .and_then(|v| v.trim().parse::<f64>().ok())
                })
        })
        .join()
        .ok()
        .flatten();
        // Where the kernel refuses sched_setattr (a sandbox), niceness alone applies.
        let refused =
            std::thread::spawn(|| !set_current(current_thread_nice(), BACKGROUND_SLICE_NS))
                .join()
                .unwrap_or(true);
        match slice {
            _ if refused => println!("SKIPPED slice check: sched_setattr is refused here"),
            Some(ns) => assert_eq!(ns as u64, BACKGROUND_SLICE_NS),
            None => println!("SKIPPED slice check: this kernel shows no se.slice"),
        }
    }
}
