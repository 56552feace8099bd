import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// A private PostgreSQL cluster inside a data directory: the relay's default database and
/// the test suite's.
///
/// `start()` runs `initdb` the first time, then `pg_ctl start` with the server listening
/// only on a unix socket inside the cluster folder (no TCP port, so clusters never clash
/// and nothing else on the network can reach it). Authentication is `trust`, which is safe
/// here because the socket sits in a folder only the cluster's owner (and root) can enter.
///
/// PostgreSQL refuses to run as root, so when started as root the cluster runs as the
/// `postgres` system user; that user must be able to reach the data directory, which is
/// checked up front.
///
/// The process holding `embedded.lock` owns the cluster and `stop()` stops it; a second
/// process on the same directory attaches to the running server and leaves it running.
/// A lock held by a process that died is released by the kernel, so after a crash the next
/// start adopts the cluster it left behind.
///
/// Not thread-safe: call `start` and `stop` from one thread.
public final class EmbeddedPostgres {
    public struct Configuration: Sendable {
        /// The data directory; the cluster lives in its `postgres/` folder.
        public var dataDirectory: URL
        /// The database the relay uses; created when missing.
        public var database: String = "parley"
        /// The cluster's superuser (made by initdb).
        public var user: String = "parley"
        /// Port number in the socket's name (`.s.PGSQL.<port>`); no TCP port is opened.
        public var port: Int = 5432
        /// Folder with initdb and pg_ctl; found automatically when nil.
        public var binDirectory: URL?
        /// Extra `postgresql.conf` lines, e.g. `max_connections = 300`.
        public var settings: [String] = []

        public init(dataDirectory: URL) {
            self.dataDirectory = dataDirectory.standardizedFileURL
        }
    }

    public let configuration: Configuration
    /// True when this process owns the cluster and will stop it.
    public private(set) var ownsServer = false
    private var lockDescriptor: Int32 = -1
    private var running = false

    public init(configuration: Configuration) {
        self.configuration = configuration
    }

    deinit {
        if lockDescriptor >= 0 { close(lockDescriptor) }
    }

    /// The cluster's folder (PGDATA); the unix socket lives here too.
    public var clusterDirectory: URL { configuration.dataDirectory.appendingPathComponent("postgres") }

    /// A libpq connection string for the configured database.
    public var connectionString: String { connectionString(database: configuration.database) }

    public func connectionString(database: String) -> String {
        "host=\(Self.quote(clusterDirectory.path)) port=\(configuration.port) "
            + "user=\(Self.quote(configuration.user)) dbname=\(Self.quote(database))"
    }

    /// Initialises (first time) and starts the cluster, or attaches to it when it already
    /// runs; then makes sure the database exists. Returns the connection string.
    @discardableResult
    public func start() throws -> String {
        if running { return connectionString }
        let tools = try Tools.locate(configuration.binDirectory)
        let runAs = try RunAs.forCurrentUser()
        let data = configuration.dataDirectory
        try prepareDataDirectory(runAs: runAs)

        let socketPath = clusterDirectory.path + "/.s.PGSQL.\(configuration.port)"
        guard socketPath.utf8.count < 108 else {
            throw failure("""
                the data directory's path is too long for a unix socket (\(socketPath.utf8.count) bytes, \
                at most 107): choose a shorter data directory
                """)
        }

        ownsServer = try takeOwnershipLock()
        let log = data.appendingPathComponent("postgres.log")
        if !FileManager.default.fileExists(atPath: clusterDirectory.appendingPathComponent("PG_VERSION").path) {
            guard ownsServer else { throw failure("another process is initialising \(data.path)") }
            try initialise(tools: tools, runAs: runAs)
        }
        try writeSettings(runAs: runAs)

        if try status(tools: tools, runAs: runAs) {
            // Left running by a process that died, or owned by another live process.
        } else if ownsServer {
            try runAs.run(tools.pgCtl, [
                "start", "-D", clusterDirectory.path, "-l", log.path, "-w", "-t", "60", "-s",
            ], log: log, what: "pg_ctl start")
        } else {
            try waitForServer(tools: tools, runAs: runAs)
        }
        running = true
        try createDatabaseIfMissing()
        return connectionString
    }

    /// Stops the cluster if this process owns it (fast shutdown: open transactions roll
    /// back, committed data is safe), and releases the lock.
    public func stop() throws {
        guard running else { return }
        running = false
        defer {
            if lockDescriptor >= 0 { close(lockDescriptor) }
            lockDescriptor = -1
            ownsServer = false
        }
        guard ownsServer else { return }
        let tools = try Tools.locate(configuration.binDirectory)
        try RunAs.forCurrentUser().run(tools.pgCtl, [
            "stop", "-D", clusterDirectory.path, "-m", "fast", "-w", "-t", "60", "-s",
        ], log: configuration.dataDirectory.appendingPathComponent("postgres.log"), what: "pg_ctl stop")
    }

    // MARK: - Steps

    private func prepareDataDirectory(runAs: RunAs) throws {
        let fileManager = FileManager.default
        let data = configuration.dataDirectory
        do {
            try fileManager.createDirectory(at: data, withIntermediateDirectories: true)
        } catch {
            throw failure("cannot create the data directory \(data.path): \(error.localizedDescription)")
        }
        guard let owner = runAs.user else {
            try setPermissions(data.path, 0o700)
            return
        }
        // Root runs the cluster as `postgres`: it must be able to enter every folder on
        // the way. The data directory itself only needs to be enterable (no listing).
        var folder = data
        var blocked: [String] = []
        while true {
            if !owner.canEnter(folder.path) { blocked.append(folder.path) }
            if folder.path == "/" { break }
            folder = folder.deletingLastPathComponent()
        }
        if blocked == [data.path] {
            try setPermissions(data.path, 0o711)
        } else if !blocked.isEmpty {
            throw failure("""
                PostgreSQL refuses to run as root, so the embedded cluster runs as the '\(owner.name)' user, \
                which cannot enter \(blocked.filter { $0 != data.path }.joined(separator: ", ")). \
                Use a data directory it can reach (for example PARLEY_DATA_DIR=/var/lib/parley), \
                allow it in (chmod o+x on those folders), or set PARLEY_DATABASE_URL to a PostgreSQL server.
                """)
        }
    }

    private func initialise(tools: Tools, runAs: RunAs) throws {
        let cluster = clusterDirectory.path
        try? FileManager.default.removeItem(atPath: cluster)   // a half-made cluster from a failed run
        try FileManager.default.createDirectory(atPath: cluster, withIntermediateDirectories: true)
        try setPermissions(cluster, 0o700)
        if let owner = runAs.user { try owner.chown(cluster) }
        try runAs.run(tools.initdb, [
            "-D", cluster, "-U", configuration.user, "-A", "trust", "-E", "UTF8", "--no-locale",
        ], log: configuration.dataDirectory.appendingPathComponent("postgres.log"), what: "initdb")
        let conf = clusterDirectory.appendingPathComponent("postgresql.conf")
        let handle = try FileHandle(forWritingTo: conf)
        defer { try? handle.close() }
        handle.seekToEndOfFile()
        handle.write(Data("\n# Parley: the settings of this embedded cluster, rewritten at each start.\ninclude_if_exists = 'parley.conf'\n".utf8))
    }

    /// Written at every start so a moved data directory still finds its socket.
    private func writeSettings(runAs: RunAs) throws {
        var lines = [
            "listen_addresses = ''",
            "unix_socket_directories = '\(clusterDirectory.path.replacingOccurrences(of: "'", with: "''"))'",
            "port = \(configuration.port)",
            // What the relay's durability promise rests on; never turn these off.
            "fsync = on",
            "synchronous_commit = on",
            "max_connections = 200",
        ]
        lines += configuration.settings
        let path = clusterDirectory.appendingPathComponent("parley.conf").path
        guard FileManager.default.createFile(atPath: path, contents: Data((lines.joined(separator: "\n") + "\n").utf8)) else {
            throw failure("cannot write \(path)")
        }
        if let owner = runAs.user { try owner.chown(path) }
    }

    private func status(tools: Tools, runAs: RunAs) throws -> Bool {
        // pg_ctl status: 0 running, 3 not running, 4 no usable data directory.
        try runAs.status(tools.pgCtl, ["status", "-D", clusterDirectory.path]) == 0
    }

    private func waitForServer(tools: Tools, runAs: RunAs) throws {
        for _ in 0..<600 {
            if try status(tools: tools, runAs: runAs) { return }
            usleep(100_000)
        }
        throw failure("the cluster in \(clusterDirectory.path) belongs to another process and did not come up")
    }

    private func createDatabaseIfMissing() throws {
        let name = configuration.database
        guard name.first.map({ $0 == "_" || ("a"..."z").contains($0) }) == true,
              name.allSatisfy({ $0 == "_" || ("a"..."z").contains($0) || ("0"..."9").contains($0) }) else {
            throw failure("database name \(name) must be lowercase letters, digits and _")
        }
        // The server accepts connections a moment after pg_ctl reports it started.
        var lastError: Error?
        for _ in 0..<100 {
            do {
                let connection = try PostgresConnection(connectionString: connectionString(database: "postgres"))
                let exists = try connection.execute("SELECT 1 FROM pg_database WHERE datname = $1", [.text(name)])
                if exists.isEmpty {
                    do {
                        try connection.executeScript("CREATE DATABASE \(name)")
                    } catch let error as StoreError where error.sqlState == "42P04" {
                        // Another process created it first.
                    }
                }
                return
            } catch let error as StoreError where error.code == .connectionFailed {
                lastError = error
                usleep(100_000)
            }
        }
        throw failure("cannot connect to the embedded cluster: \(lastError.map { "\($0)" } ?? "timed out")")
    }

    /// Holds `embedded.lock` for the life of this object; false when another process has it.
    private func takeOwnershipLock() throws -> Bool {
        if lockDescriptor >= 0 { return ownsServer }
        let path = configuration.dataDirectory.appendingPathComponent("embedded.lock").path
        let descriptor = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        guard descriptor >= 0 else { throw failure("cannot open \(path): \(String(cString: strerror(errno)))") }
        lockDescriptor = descriptor
        return flock(descriptor, LOCK_EX | LOCK_NB) == 0
    }

    private func setPermissions(_ path: String, _ mode: mode_t) throws {
        guard chmod(path, mode) == 0 else {
            throw failure("cannot chmod \(path): \(String(cString: strerror(errno)))")
        }
    }

    private func failure(_ detail: String) -> StoreError {
        StoreError(.embeddedServerFailed, detail: detail)
    }

    /// Quotes a libpq connection-string value.
    static func quote(_ value: String) -> String {
        "'" + value.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "'", with: "\\'") + "'"
    }
}

// MARK: - Finding and running the PostgreSQL tools

extension EmbeddedPostgres {
    struct Tools {
        let initdb: String
        let pgCtl: String

        /// Debian keeps the server tools in /usr/lib/postgresql/<major>/bin, off PATH.
        static func locate(_ configured: URL?) throws -> Tools {
            var folders: [String] = []
            if let configured { folders.append(configured.path) }
            if let fromEnvironment = ProcessInfo.processInfo.environment["PARLEY_PG_BIN"] { folders.append(fromEnvironment) }
            let debian = "/usr/lib/postgresql"
            let majors = ((try? FileManager.default.contentsOfDirectory(atPath: debian)) ?? [])
                .compactMap(Int.init).sorted(by: >)
            folders += majors.map { "\(debian)/\($0)/bin" }
            folders += (ProcessInfo.processInfo.environment["PATH"] ?? "").split(separator: ":").map(String.init)
            for folder in folders {
                let initdb = folder + "/initdb", pgCtl = folder + "/pg_ctl"
                if FileManager.default.isExecutableFile(atPath: initdb), FileManager.default.isExecutableFile(atPath: pgCtl) {
                    return Tools(initdb: initdb, pgCtl: pgCtl)
                }
            }
            throw StoreError(.embeddedServerFailed, detail: """
                PostgreSQL's server tools (initdb, pg_ctl) were not found: install Debian's 'postgresql' \
                package (scripts/setup does), set PARLEY_PG_BIN, or set PARLEY_DATABASE_URL
                """)
        }
    }

    /// The system user a non-root cluster runs as, and how to run a tool as that user.
    struct SystemUser {
        let name: String
        let uid: uid_t
        let gid: gid_t

        static func named(_ name: String) -> SystemUser? {
            guard let entry = getpwnam(name) else { return nil }
            return SystemUser(name: name, uid: entry.pointee.pw_uid, gid: entry.pointee.pw_gid)
        }

        /// Whether this user may enter (search) a folder, by its mode bits.
        func canEnter(_ path: String) -> Bool {
            var info = stat()
            guard stat(path, &info) == 0 else { return false }
            if info.st_uid == uid { return info.st_mode & S_IXUSR != 0 }
            if info.st_gid == gid { return info.st_mode & S_IXGRP != 0 }
            return info.st_mode & S_IXOTH != 0
        }

        func chown(_ path: String) throws {
            guard Glibc.chown(path, uid, gid) == 0 else {
                throw StoreError(.embeddedServerFailed, detail: "cannot chown \(path): \(String(cString: strerror(errno)))")
            }
        }
    }

    struct RunAs {
        /// nil: run tools as the current user.
        let user: SystemUser?

        static func forCurrentUser() throws -> RunAs {
            guard geteuid() == 0 else { return RunAs(user: nil) }
            guard let postgres = SystemUser.named("postgres") else {
                throw StoreError(.embeddedServerFailed, detail: """
                    PostgreSQL refuses to run as root and there is no 'postgres' user to run it as: \
                    install Debian's 'postgresql' package, or run the relay as an ordinary user
                    """)
            }
            return RunAs(user: postgres)
        }

        /// Runs a tool, appending its output to `log`; throws with the log's tail on failure.
        func run(_ tool: String, _ arguments: [String], log: URL, what: String) throws {
            let descriptor = open(log.path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0o644)
            guard descriptor >= 0 else {
                throw StoreError(.embeddedServerFailed, detail: "cannot open \(log.path): \(String(cString: strerror(errno)))")
            }
            defer { close(descriptor) }
            if let user { try user.chown(log.path) }
            let code = try launch(tool, arguments, output: descriptor)
            guard code == 0 else {
                let tail = (try? String(contentsOf: log, encoding: .utf8)).map { String($0.suffix(2000)) } ?? ""
                throw StoreError(.embeddedServerFailed, detail: "\(what) failed with status \(code); \(log.path) ends with:\n\(tail)")
            }
        }

        /// Runs a tool with its output discarded and returns its exit status.
        func status(_ tool: String, _ arguments: [String]) throws -> Int32 {
            let descriptor = open("/dev/null", O_WRONLY | O_CLOEXEC)
            guard descriptor >= 0 else {
                throw StoreError(.embeddedServerFailed, detail: "cannot open /dev/null")
            }
            defer { close(descriptor) }
            return try launch(tool, arguments, output: descriptor)
        }

        private func launch(_ tool: String, _ arguments: [String], output: Int32) throws -> Int32 {
            if let user {
                // `env -C /`: PostgreSQL's tools fail when they cannot reach the working
                // directory, e.g. a checkout under /root when running as postgres.
                return try Subprocess.run(RunAs.runuser, ["-u", user.name, "--", "env", "-C", "/", tool] + arguments, output: output)
            }
            return try Subprocess.run(tool, arguments, output: output)
        }

        static let runuser: String = ["/usr/sbin/runuser", "/sbin/runuser", "/usr/bin/runuser"]
            .first { FileManager.default.isExecutableFile(atPath: $0) } ?? "/usr/sbin/runuser"
    }
}
