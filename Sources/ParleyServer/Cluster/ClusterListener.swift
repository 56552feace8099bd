import Foundation
import ParleyProtocol
import ParleyStore

/// What the LISTEN thread (and the jobs that read gaps for it) hand to the service thread.
enum ClusterEvent: Sendable {
    /// A committed event another node announced, read from the tables.
    enum Remote: Sendable {
        /// With the membership version in force at its commit, when known.
        case message(MessageRecord, membershipVersion: Int?)
        case key(KeyRecord, copies: [ID: [UInt8]], atSeq: Int)
        case member(Event.Member, members: [ID], atSeq: Int)
    }

    /// Where a watched channel stands, read right after LISTEN (re)started.
    struct ChannelState: Sendable {
        var channelID: ID
        var lastSeq: Int
        var keyID: ID?
        var membershipVersion: Int
    }

    /// The LISTEN connection is up (after its catch-up) or lost.
    case listening(Bool)
    /// Announced commits of other nodes, in commit order.
    case remote([Remote])
    /// The watched channels' state: after a (re)connect (`urgent`: what was missed is read
    /// by seq at once), and every few seconds as a check that no announcement went missing.
    case caughtUp([ChannelState], urgent: Bool)
    /// A quarter second passed: gaps that no announcement filled are read from the tables.
    case tick
}

/// The node's one LISTEN connection (`application_name` `parley-listen`), on its own
/// thread: it turns other nodes' announcements (`Announcement`) into records read from the
/// tables and hands them to the service thread, in commit order.
///
/// Announcements are never trusted to be complete: after the connection is lost (or at
/// start) the thread LISTENs again first and then reads where every watched channel stands
/// (`caughtUp`), so whatever committed while nobody listened is read by seq — clients keep
/// their connections. Only watched channels (with subscribers on this node) are read;
/// membership changes are read always, since their affected user may be connected here
/// without a subscription.
final class ClusterListener: @unchecked Sendable {
    static let applicationName = "parley-listen"
    /// How often the service thread gets a `tick`.
    static let tickInterval = 0.25
    /// How often the watched channels' `last_seq` is compared with what was announced
    /// (a commit whose announcement never came — say, from a node of an older release —
    /// is read after at most this long).
    static let reconcileInterval = 5.0

    private let connectionString: String
    private let nodeID: ID
    private let completions: CompletionQueue
    private let metrics: Metrics
    private let log: Log

    private let lock = NSLock()
    private var watched: Set<ID> = []          // guarded by lock
    private let thread = BackgroundThread(name: "parley-listen")

    init(connectionString: String, nodeID: ID, completions: CompletionQueue, metrics: Metrics, log: Log) {
        self.connectionString = connectionString
        self.nodeID = nodeID
        self.completions = completions
        self.metrics = metrics
        self.log = log
    }

    /// A channel gained its first subscriber on this node (service thread).
    func watch(_ channelID: ID) { _ = lock.withLock { watched.insert(channelID) } }

    /// A channel lost its last subscriber on this node (service thread).
    func unwatch(_ channelID: ID) { _ = lock.withLock { watched.remove(channelID) } }

    private var isStopping: Bool { thread.isStopping }

    func start() { thread.start { [self] in run() } }

    func stop() { thread.stop() }

    // MARK: - The thread

    private func run() {
        var connection: PostgresConnection?
        var generation = 0
        var everConnected = false
        /// When the connection was lost (nil before the first one): the catch-up of
        /// membership changes starts a margin before it.
        var lostAt: Date?
        var backoff = 0.1
        var lastTick = Date()
        var lastReconcile = Date()
        while !isStopping {
            if Date().timeIntervalSince(lastTick) >= Self.tickInterval {
                lastTick = Date()
                completions.push(.cluster(.tick))
            }
            guard let listening = connection else {
                do {
                    let fresh = try PostgresConnection(connectionString: connectionString,
                                                       applicationName: Self.applicationName)
                    try fresh.listen(Announcement.channel)
                    try catchUp(on: fresh, since: lostAt)
                    connection = fresh
                    generation = fresh.generation
                    if everConnected { metrics.listenReconnected() }
                    metrics.listening(true)
                    log.info("listen.connected", "listening for other nodes' commits",
                             ["reconnect": .bool(everConnected),
                              "down_ms": .int(lostAt.map { Int(Date().timeIntervalSince($0) * 1000) } ?? 0)])
                    everConnected = true
                    lostAt = nil
                    backoff = 0.1
                    completions.push(.cluster(.listening(true)))
                } catch {
                    if lostAt == nil { lostAt = Date() }
                    pause(backoff)
                    backoff = min(1, backoff * 2)
                }
                continue
            }
            do {
                let received = try listening.notifications(timeout: 0.1)
                if !received.isEmpty { try handle(received, on: listening) }
                if Date().timeIntervalSince(lastReconcile) >= Self.reconcileInterval {
                    lastReconcile = Date()
                    let states = try channelStates(on: listening)
                    if !states.isEmpty { completions.push(.cluster(.caughtUp(states, urgent: false))) }
                }
                // A query that had to reconnect on the way lost the LISTEN.
                guard listening.generation == generation else {
                    throw StoreError(.connectionFailed, detail: "reconnected without LISTEN")
                }
            } catch {
                connection = nil
                lostAt = Date()
                metrics.listening(false)
                log.warn("listen.lost", "the LISTEN connection was lost; reconnecting, then catching up",
                         ["error": .string((error as? StoreError)?.description ?? "unknown")])
                completions.push(.cluster(.listening(false)))
            }
        }
    }

    /// Sleeps in small steps, still ticking, until `seconds` passed or the relay stops.
    private func pause(_ seconds: Double) {
        let until = Date().addingTimeInterval(seconds)
        while !isStopping, Date() < until {
            usleep(50_000)
        }
        completions.push(.cluster(.tick))
    }

    /// Reads what a batch of announcements names and hands it over in one completion.
    private func handle(_ notifications: [PostgresConnection.Notification], on db: PostgresConnection) throws {
        let watched = lock.withLock { self.watched }
        var ranges: [Announcement.Range] = []
        var remote: [ClusterEvent.Remote] = []
        // Messages first, read with one statement; key records and membership changes are
        // placed by their atSeq on the service thread, so their order against messages
        // here does not matter.
        var extras: [Announcement] = []
        for notification in notifications where notification.channel == Announcement.channel {
            guard let announcement = Announcement(payload: notification.payload) else {
                log.throttled(.warn, "listen.bad_payload", "an announcement could not be read; ignored")
                continue
            }
            guard announcement.node != nodeID else { continue }
            metrics.announcementReceived()
            switch announcement {
            case .messages(_, let announced):
                ranges += announced.filter { watched.contains($0.channelID) }
            case .key(_, let channelID, _, _):
                if watched.contains(channelID) { extras.append(announcement) }
            case .member:
                extras.append(announcement)
            }
        }
        remote += try ClusterQueries.messagesWithVersions(ranges, on: db).map {
            .message($0.record, membershipVersion: $0.membershipVersion)
        }
        for announcement in extras {
            switch announcement {
            case .key(_, _, let keyID, let atSeq):
                if let (record, copies) = try ClusterQueries.key(keyID, on: db) {
                    remote.append(.key(record, copies: copies, atSeq: atSeq))
                }
            case .member(_, let channelID, let version, let atSeq, let userID, let action, let by):
                for (event, members) in try ClusterQueries.memberEvents(
                    channelID: channelID, version: version, userID: userID, action: userID == nil ? nil : action,
                    by: by, on: db) {
                    remote.append(.member(event, members: members, atSeq: atSeq))
                }
            case .messages:
                break
            }
        }
        if !remote.isEmpty { completions.push(.cluster(.remote(remote))) }
    }

    /// Where each watched channel stands now.
    private func channelStates(on db: PostgresConnection) throws -> [ClusterEvent.ChannelState] {
        let watched = lock.withLock { self.watched }
        guard !watched.isEmpty else { return [] }
        return try db.execute(ClusterQueries.channelStates, [.array(watched.map(\.string))]).rows.map { row in
            ClusterEvent.ChannelState(channelID: try row.id(0), lastSeq: try row.int(1),
                                      keyID: try row.optionalID(2), membershipVersion: try row.int(3))
        }
    }

    /// After LISTEN: where each watched channel stands, and (after an outage) every
    /// membership change since a margin before the connection was lost.
    private func catchUp(on db: PostgresConnection, since lostAt: Date?) throws {
        let states = try channelStates(on: db)
        var remote: [ClusterEvent.Remote] = []
        if let lostAt {
            let since = lostAt.timeIntervalSince1970 - 10
            let lastSeq = Dictionary(states.map { ($0.channelID, $0.lastSeq) }, uniquingKeysWith: { first, _ in first })
            for row in try db.execute(ClusterQueries.changesSince, [.text(String(format: "%.3f", since))]).rows {
                let channelID = try row.id(0)
                let atSeq = try row.isNull(2) ? lastSeq[channelID] ?? 0 : try row.int(2)
                for (event, members) in try ClusterQueries.memberEvents(
                    channelID: channelID, version: try row.int(1), userID: nil, action: nil, by: nil, on: db) {
                    remote.append(.member(event, members: members, atSeq: atSeq))
                }
            }
        }
        completions.push(.cluster(.caughtUp(states, urgent: true)))
        if !remote.isEmpty { completions.push(.cluster(.remote(remote))) }
    }
}
