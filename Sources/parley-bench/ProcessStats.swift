import Foundation

/// Clocks: CLOCK_MONOTONIC nanoseconds for latency (one clock for every thread of the
/// process), unix seconds for the frames' `ts`.
enum Clock {
    static func now() -> UInt64 {
        var spec = timespec()
        clock_gettime(CLOCK_MONOTONIC, &spec)
        return UInt64(spec.tv_sec) * 1_000_000_000 + UInt64(spec.tv_nsec)
    }

    static func unixSeconds() -> Int { Int(time(nil)) }

    static func seconds(since start: UInt64, until end: UInt64 = now()) -> Double {
        Double(end &- start) / 1e9
    }
}

/// What /proc and getrusage say about the relay, PostgreSQL and the bench itself.
enum ProcessStats {
    /// Resident memory of `pid` in bytes (VmRSS), nil when it cannot be read.
    static func residentBytes(of pid: Int32) -> Int? {
        guard let status = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8) else { return nil }
        for line in status.split(separator: "\n") where line.hasPrefix("VmRSS:") {
            let fields = line.split(separator: " ", omittingEmptySubsequences: true)
            if fields.count >= 2, let kib = Int(fields[1]) { return kib * 1024 }
        }
        return nil
    }

    /// One process's /proc/PID/stat fields that matter here.
    struct ProcStat {
        var parent: Int32
        var command: String
        /// utime + stime, seconds.
        var ownCPU: Double
        /// cutime + cstime: children that exited and were waited for, seconds.
        var reapedChildrenCPU: Double
    }

    static func stat(of pid: Int32) -> ProcStat? {
        guard let text = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
              let open = text.firstIndex(of: "("), let close = text.lastIndex(of: ")")
        else { return nil }
        let command = String(text[text.index(after: open)..<close])
        // Fields after the command: state(3) ppid(4) … utime(14) stime(15) cutime(16) cstime(17).
        let fields = text[text.index(after: close)...].split(separator: " ")
        guard fields.count > 14, let parent = Int32(fields[1]),
              let utime = Double(fields[11]), let stime = Double(fields[12]),
              let cutime = Double(fields[13]), let cstime = Double(fields[14])
        else { return nil }
        let ticks = Double(sysconf(Int32(_SC_CLK_TCK)))
        return ProcStat(parent: parent, command: command, ownCPU: (utime + stime) / ticks,
                        reapedChildrenCPU: (cutime + cstime) / ticks)
    }

    /// Every live process id.
    static func allPIDs() -> [Int32] {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []
        return names.compactMap { Int32($0) }
    }

    /// The postmaster of the relay's embedded cluster: named in `<data dir>/postgres/postmaster.pid`,
    /// the data dir taken from the relay's `--data-dir` (default `.parley` in its working
    /// directory); else any postgres process whose parent is the relay.
    static func postmasters(of relay: Int32) -> [Int32] {
        let arguments = ((try? Data(contentsOf: URL(fileURLWithPath: "/proc/\(relay)/cmdline"))) ?? Data())
            .split(separator: 0).map { String(decoding: $0, as: UTF8.self) }
        var dataDirectory = ".parley"
        for (index, argument) in arguments.enumerated() {
            if argument == "--data-dir", index + 1 < arguments.count { dataDirectory = arguments[index + 1] }
            if argument.hasPrefix("--data-dir=") { dataDirectory = String(argument.dropFirst("--data-dir=".count)) }
        }
        if !dataDirectory.hasPrefix("/") { dataDirectory = "/proc/\(relay)/cwd/" + dataDirectory }
        if let text = try? String(contentsOfFile: dataDirectory + "/postgres/postmaster.pid", encoding: .utf8),
           let first = text.split(separator: "\n").first, let pid = Int32(first), stat(of: pid) != nil {
            return [pid]
        }
        return allPIDs().filter { pid in
            guard let stat = stat(of: pid) else { return false }
            return stat.parent == relay && stat.command.hasPrefix("postgres")
        }
    }

    /// CPU seconds of each root and all its descendants, live or reaped: a root's own time,
    /// its reaped children's, and every live descendant's own and reaped time. Subtrees
    /// under `excluded` are left out.
    static func treeCPUSeconds(roots: [Int32], excluding excluded: [Int32] = []) -> Double {
        tree(roots: roots, excluding: excluded).reduce(0) { $0 + $1.stat.ownCPU + $1.stat.reapedChildrenCPU }
    }

    /// Resident bytes of each root and its live descendants (a master process and its
    /// workers), leaving out the subtrees under `excluded`.
    static func treeResidentBytes(roots: [Int32], excluding excluded: [Int32] = []) -> Int? {
        let sizes = tree(roots: roots, excluding: excluded).compactMap { residentBytes(of: $0.pid) }
        return sizes.isEmpty ? nil : sizes.reduce(0, +)
    }

    private static func tree(roots: [Int32], excluding excluded: [Int32]) -> [(pid: Int32, stat: ProcStat)] {
        let stats = Dictionary(uniqueKeysWithValues: allPIDs().compactMap { pid in stat(of: pid).map { (pid, $0) } })
        var children: [Int32: [Int32]] = [:]
        for (pid, stat) in stats { children[stat.parent, default: []].append(pid) }
        var found: [(Int32, ProcStat)] = []
        var pending = roots
        var seen = Set(excluded)
        while let pid = pending.popLast() {
            guard seen.insert(pid).inserted, let stat = stats[pid] else { continue }
            found.append((pid, stat))
            pending.append(contentsOf: children[pid] ?? [])
        }
        return found
    }

    /// CPU seconds (user + system) of this process so far.
    static func ownCPUSeconds() -> Double {
        var usage = rusage()
        getrusage(Int32(RUSAGE_SELF.rawValue), &usage)
        func seconds(_ value: timeval) -> Double { Double(value.tv_sec) + Double(value.tv_usec) / 1e6 }
        return seconds(usage.ru_utime) + seconds(usage.ru_stime)
    }

    /// Raises the open-file limit to `wanted` (or as far as allowed); returns the soft limit.
    @discardableResult
    static func raiseFileLimit(to wanted: Int) -> Int {
        var limit = rlimit()
        getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit)
        let target = rlim_t(wanted)
        if limit.rlim_cur < target {
            if limit.rlim_max < target {
                var raised = rlimit(rlim_cur: target, rlim_max: target)
                if setrlimit(Int32(RLIMIT_NOFILE.rawValue), &raised) == 0 { return wanted }
            }
            limit.rlim_cur = min(target, limit.rlim_max)
            setrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit)
        }
        getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit)
        return Int(limit.rlim_cur)
    }
}

/// CPU seconds of the relay (each node of it), PostgreSQL and the bench over one interval.
struct CPUSampler {
    let relays: [Int32]
    let postgres: [Int32]
    private var start: (relays: [Double], postgres: Double?, bench: Double)

    init(relays: [Int32], postgres: [Int32]) {
        self.relays = relays
        self.postgres = postgres
        start = ([], nil, 0)
        start = sample()
    }

    private func sample() -> (relays: [Double], postgres: Double?, bench: Double) {
        (relays.map { ProcessStats.treeCPUSeconds(roots: [$0], excluding: postgres) },
         postgres.isEmpty ? nil : ProcessStats.treeCPUSeconds(roots: postgres),
         ProcessStats.ownCPUSeconds())
    }

    /// CPU seconds since `init`: the relay nodes together and each, PostgreSQL, the bench.
    func elapsed() -> (relay: Double?, relayEach: [Double], postgres: Double?, bench: Double) {
        let end = sample()
        let each = zip(start.relays, end.relays).map { $1 - $0 }
        return (each.isEmpty ? nil : each.reduce(0, +), each,
                start.postgres.flatMap { first in end.postgres.map { $0 - first } },
                end.bench - start.bench)
    }
}
