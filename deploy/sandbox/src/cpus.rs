//! Host CPUs a device thread may run on: an operator's placement of the
//! busiest threads (as libvirt's `<iothreadpin>` or Cloud Hypervisor's
//! `queue_affinity` place I/O threads). Written as xl.cfg's `cpus` and
//! `taskset -c` write them: `3`, `0-3,6`, `all`.

use std::fmt;
use std::str::FromStr;

/// A set of host CPUs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CpuList {
    cpus: Vec<usize>,
}

impl CpuList {
    /// The CPUs, ascending.
    pub fn cpus(&self) -> &[usize] {
        &self.cpus
    }

    /// These CPUs less `other`'s; None when nothing is left.
    pub fn without(&self, other: &CpuList) -> Option<CpuList> {
        let cpus: Vec<usize> = self.cpus.iter().copied().filter(|c| !other.cpus.contains(c)).collect();
        (!cpus.is_empty()).then_some(CpuList { cpus })
    }
}

/// CPU numbers a list may name (`cpu_set_t` holds 1024).
const MAX_CPUS: usize = 8 * std::mem::size_of::<libc::cpu_set_t>();

impl FromStr for CpuList {
    type Err = String;

    fn from_str(s: &str) -> Result<CpuList, String> {
        let s = s.trim();
        if s == "all" {
            // Every CPU the host has, not only those this process may use now.
            // SAFETY: sysconf reads a system value; no memory is passed.
            let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_CONF) };
            return Ok(CpuList { cpus: (0..(n.max(1) as usize).min(MAX_CPUS)).collect() });
        }
        let number = |t: &str| -> Result<usize, String> {
            let n: usize = t.trim().parse().map_err(|_| format!("CPU list {s:?}: {t:?} is not a CPU number"))?;
            if n >= MAX_CPUS {
                return Err(format!("CPU list {s:?}: CPU {n} is past the last ({})", MAX_CPUS - 1));
            }
            Ok(n)
        };
        let mut cpus = Vec::new();
        for part in s.split(',') {
            let (lo, hi) = match part.split_once('-') {
                Some((a, b)) => (number(a)?, number(b)?),
                None => (number(part)?, number(part)?),
            };
            if lo > hi {
                return Err(format!("CPU list {s:?}: range {lo}-{hi} runs backwards"));
            }
            cpus.extend(lo..=hi);
        }
        cpus.sort_unstable();
        cpus.dedup();
        Ok(CpuList { cpus })
    }
}

impl fmt::Display for CpuList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut i = 0;
        let mut first = true;
        while i < self.cpus.len() {
            let mut j = i;
            while j + 1 < self.cpus.len() && self.cpus[j + 1] == self.cpus[j] + 1 {
                j += 1;
            }
            if !first {
                f.write_str(",")?;
            }
            first = false;
            if j > i {
                write!(f, "{}-{}", self.cpus[i], self.cpus[j])?;
            } else {
                write!(f, "{}", self.cpus[i])?;
            }
            i = j + 1;
        }
        Ok(())
    }
}

/// Confines the calling thread to `list` (`sched_setaffinity` on itself;
/// the seccomp filters allow no other target). Fails, changing nothing,
/// when none of its CPUs is one the process may use.
pub fn pin_this_thread(list: &CpuList) -> std::io::Result<()> {
    pin_thread(0, list)
}

/// Confines thread `tid` (0: the calling one) to `list`; another process's
/// thread needs the right to (same user, or `CAP_SYS_NICE`).
pub fn pin_thread(tid: libc::pid_t, list: &CpuList) -> std::io::Result<()> {
    // SAFETY: cpu_set_t is plain bits; all zeroes is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &c in &list.cpus {
        // SAFETY: `c` < MAX_CPUS (checked when parsed), inside the set.
        unsafe { libc::CPU_SET(c, &mut set) };
    }
    // SAFETY: the set is a live cpu_set_t of the size passed; the kernel
    // only reads it.
    if unsafe { libc::sched_setaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &set) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The CPUs the calling thread may run on.
pub fn this_thread() -> std::io::Result<CpuList> {
    // SAFETY: as above.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: pid 0 is the calling thread; the kernel fills `set`, of the size passed.
    if unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: reading bits of a filled set, each index < MAX_CPUS.
    Ok(CpuList { cpus: (0..MAX_CPUS).filter(|&c| unsafe { libc::CPU_ISSET(c, &set) }).collect() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_lists_parse_as_taskset_writes_them() {
        let l: CpuList = "0-3,6".parse().unwrap();
        assert_eq!(l.cpus(), &[0, 1, 2, 3, 6]);
        assert_eq!(l.to_string(), "0-3,6");
        let l: CpuList = " 5, 1,1-2 ".parse().unwrap();
        assert_eq!(l.cpus(), &[1, 2, 5]);
        assert_eq!(l.to_string(), "1-2,5");
        let all: CpuList = "all".parse().unwrap();
        let ours = this_thread().unwrap();
        assert!(ours.cpus().iter().all(|c| all.cpus().contains(c)), "{all} holds {ours}");
    }

    #[test]
    fn test_a_list_less_another() {
        let l: CpuList = "0-3,6".parse().unwrap();
        assert_eq!(l.without(&"1,6,9".parse().unwrap()).unwrap().to_string(), "0,2-3");
        assert_eq!(l.without(&"7".parse().unwrap()).unwrap(), l);
        assert_eq!(l.without(&"0-6".parse().unwrap()), None);
    }

    #[test]
    fn test_bad_lists_are_refused_with_the_reason() {
        assert!("".parse::<CpuList>().unwrap_err().contains("not a CPU number"));
        assert!("1,x".parse::<CpuList>().unwrap_err().contains("\"x\" is not a CPU number"));
        assert!("3-1".parse::<CpuList>().unwrap_err().contains("runs backwards"));
        assert!("4096".parse::<CpuList>().unwrap_err().contains("past the last"));
        assert!("-1".parse::<CpuList>().is_err());
    }

    #[test]
    fn test_a_thread_pins_itself_and_only_itself() {
        let mine = this_thread().unwrap();
        let first = CpuList { cpus: vec![mine.cpus()[0]] };
        let seen = std::thread::spawn(move || {
            pin_this_thread(&first).unwrap();
            this_thread().unwrap()
        })
        .join()
        .unwrap();
        assert_eq!(seen.cpus(), &[mine.cpus()[0]]);
        assert_eq!(this_thread().unwrap(), mine, "the spawning thread keeps its CPUs");
        // A CPU the process may not use is refused.
        let outside = CpuList { cpus: vec![MAX_CPUS - 1] };
        let err = std::thread::spawn(move || pin_this_thread(&outside)).join().unwrap().unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EINVAL));
    }
}
