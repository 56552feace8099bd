import CLibWebSockets
import Foundation
import ParleyProtocol
import ParleyStore

/// The relay: one libwebsockets context serving WebSocket `/ws` (subprotocol `parley.v1`)
/// and plain HTTP (`/healthz`, `/metrics`) on one port.
///
/// Threads: the lws service thread (`parley-lws`) owns the context, every `Connection`,
/// the subscription registry and the outgoing queues, and never blocks; database work
/// runs on `DatabaseWorkers`, whose results come back through `CompletionQueue`; a health
/// thread pings PostgreSQL every second for `/healthz`. `start` and `stop` may be called
/// from any thread (not concurrently with each other).
public final class Relay: @unchecked Sendable {
    public let configuration: RelayConfiguration
    let service: RelayService
    let workers: DatabaseWorkers
    let completions = CompletionQueue()
    let metrics = Metrics()
    let health: HealthMonitor
    let listener: ClusterListener
    /// The web client, read at `start`.
    var webFiles = WebFiles()
    public let log: Log
    let nodeID = ID.random()

    // Service-thread state: touched only by the lws service thread.
    var context: OpaquePointer?
    var connections: [UInt64: Connection] = [:]
    var connectionIDs: [OpaquePointer: UInt64] = [:]
    var channelSubscribers: [ID: Set<UInt64>] = [:]
    var userConnections: [ID: Set<UInt64>] = [:]
    var sessionConnections: [[UInt8]: Set<UInt64>] = [:]
    var pendingHTTP: [OpaquePointer: [UInt8]] = [:]
    var nextConnectionID: UInt64 = 0
    var nextGeneration: UInt64 = 0
    /// A subscribe request waiting for the database: what it replaced, to put back if it fails.
    var pendingSubscribes: [UInt64: [String: [ID: Subscription?]]] = [:]
    var rateLimiter: RateLimiter
    /// Open WebSocket connections per peer address (the per-address limit).
    var addressConnections: [String: Int] = [:]
    /// Worker jobs submitted whose completion has not been drained yet.
    var outstandingJobs = 0
    /// Stopping: new requests and handshakes are refused while in-flight work finishes.
    var draining = false
    /// Per channel with subscribers here: its commits, from every node, in order.
    var feeds: [ID: ChannelFeed] = [:]
    var nextFeedEpoch: UInt64 = 0
    /// Whether the LISTEN connection is up: while it is down, gaps are read at once.
    var listening = false
    /// The `event.member`s sent lately (channel, version, user), oldest first in the order.
    var recentMemberEvents: Set<String> = []
    var recentMemberEventOrder: [String] = []

    // Shared between threads, guarded by `stateLock`.
    private let stateLock = NSLock()
    private var stopping = false
    private var serviceThread: Thread?
    private var boundPort = 0
    private var startupError: String?

    /// Where libwebsockets' own lines go: its log callback is process-wide and takes no context.
    nonisolated(unsafe) static var lwsLog: Log?

    /// The port the relay listens on (useful when configured with port 0).
    public var port: Int { stateLock.withLock { boundPort } }

    var isStopping: Bool { stateLock.withLock { stopping } }

    /// `log` defaults to standard error at the configured level and format.
    public init(configuration: RelayConfiguration, connectionString: String, log: Log? = nil) {
        self.configuration = configuration
        let log = log ?? Log(level: configuration.logLevel, format: configuration.logFormat)
        self.log = log
        let service = RelayService(configuration: configuration, log: log)
        self.service = service
        workers = DatabaseWorkers(count: configuration.databaseWorkers, connectionString: connectionString,
                                  metrics: metrics, log: log,
                                  storeSends: Self.storeSends(service: service, metrics: metrics, completions: completions))
        health = HealthMonitor(connectionString: connectionString, log: log)
        listener = ClusterListener(connectionString: connectionString, nodeID: nodeID, completions: completions,
                                   metrics: metrics, log: log)
        rateLimiter = RateLimiter(limits: configuration.rateLimits)
    }

    /// Starts listening; returns once the socket is bound, or throws when it cannot be.
    public func start() throws {
        if let root = configuration.webRoot {
            do {
                webFiles = try WebFiles(folder: root)
            } catch {
                throw RelayError(message: String(describing: error))
            }
        }
        health.start()
        workers.start()
        let ready = DispatchSemaphore(value: 0)
        let thread = Thread { [self] in
            runServiceLoop(ready: ready)
        }
        thread.name = "parley-lws"
        thread.stackSize = 4 << 20
        stateLock.withLock { serviceThread = thread }
        thread.start()
        ready.wait()
        if let message = stateLock.withLock({ startupError }) {
            workers.stop()
            health.stop()
            throw RelayError(message: message)
        }
        listener.start()
    }

    /// Stops accepting, closes every connection (1001, going away) and returns when the
    /// service thread, the workers and the health thread have ended.
    public func stop() {
        let thread: Thread? = stateLock.withLock {
            stopping = true
            return serviceThread
        }
        if let context = completions.context { lws_cancel_service(context) }
        while let thread, !thread.isFinished { usleep(2000) }
        listener.stop()
        workers.stop()
        health.stop()
    }

    // MARK: - Service loop

    private func runServiceLoop(ready: DispatchSemaphore) {
        // lws's own notices are connection-level noise; its errors and warnings are not.
        // Its lines go through the relay's log as event `lws`, so every line has one format.
        Self.lwsLog = log
        let emit: @convention(c) (Int32, UnsafePointer<CChar>?) -> Void = { level, line in
            guard let line, let log = Relay.lwsLog else { return }
            let text = String(cString: line).trimmingCharacters(in: .whitespacesAndNewlines)
            let mapped: Log.Level = level & Int32(LLL_ERR) != 0 ? .error : level & Int32(LLL_WARN) != 0 ? .warn : .debug
            // Its warnings and errors can be provoked by peers: throttled; debug shows all.
            if mapped == .debug { log.debug("lws", text) } else { log.throttled(mapped, "lws", text) }
        }
        switch configuration.logLevel {
        case .error: lws_set_log_level(Int32(LLL_ERR), emit)
        case .warn, .info: lws_set_log_level(Int32(LLL_ERR | LLL_WARN), emit)
        case .debug: lws_set_log_level(Int32(LLL_ERR | LLL_WARN | LLL_NOTICE | LLL_INFO), emit)
        }
        let protocols = Self.makeProtocols()
        defer {
            for index in 0..<2 { free(UnsafeMutableRawPointer(mutating: protocols[index].name)) }
            protocols.deallocate()
        }
        let retryPolicy = UnsafeMutablePointer<lws_retry_bo_t>.allocate(capacity: 1)
        retryPolicy.initialize(to: lws_retry_bo_t())
        retryPolicy.pointee.secs_since_valid_ping = UInt16(Limits.pingIntervalSeconds)
        retryPolicy.pointee.secs_since_valid_hangup = UInt16(Limits.idleTimeoutSeconds)
        defer { retryPolicy.deallocate() }

        var info = lws_context_creation_info()
        let host = strdup(configuration.host)
        let certificate = configuration.tlsCertificatePath.map { strdup($0) }
        let key = configuration.tlsKeyPath.map { strdup($0) }
        defer {
            free(host)
            certificate.map { free($0) }
            key.map { free($0) }
        }
        info.port = Int32(configuration.port)
        info.iface = UnsafePointer(host)
        info.protocols = UnsafePointer(protocols)
        info.user = Unmanaged.passUnretained(self).toOpaque()
        info.retry_and_idle_policy = UnsafePointer(retryPolicy)
        info.timeout_secs = 10
        let tls = certificate != nil && key != nil
        info.options = parley_lws_server_options(tls ? 1 : 0)
        if tls {
            info.ssl_cert_filepath = UnsafePointer(certificate!)
            info.ssl_private_key_filepath = UnsafePointer(key!)
        }

        guard let context = lws_create_context(&info) else {
            stateLock.withLock { startupError = "cannot listen on \(configuration.host):\(configuration.port)" }
            ready.signal()
            return
        }
        self.context = context
        completions.context = context
        let vhost = lws_get_vhost_by_name(context, "default")
        let listening = vhost.map { Int(lws_get_vhost_listen_port($0)) } ?? configuration.port
        stateLock.withLock { boundPort = listening }
        ready.signal()

        // On stop, in three steps, each bounded: (1) drain — new requests are answered
        // `unavailable` and new handshakes 503, while the work in flight finishes and its
        // replies are written (up to 2 s); (2) a quiet 100 ms, so requests a client sent on
        // the last replies arrive (a socket closed with unread bytes is reset, and the peer
        // may lose the close frame); (3) every connection gets 1001, served until all are
        // closed (up to 2 s).
        var drainUntil: Date?, quietUntil: Date?, closeUntil: Date?
        while true {
            if isStopping {
                let now = Date()
                if drainUntil == nil {
                    draining = true
                    drainUntil = now.addingTimeInterval(2)
                }
                if quietUntil == nil,
                   (outstandingJobs == 0 && !connections.values.contains { $0.hasQueuedFrames }) || now > drainUntil! {
                    quietUntil = now.addingTimeInterval(0.1)
                }
                if let quiet = quietUntil, now > quiet {
                    if closeUntil == nil { closeUntil = now.addingTimeInterval(2) }
                    if connections.isEmpty || now > closeUntil! { break }
                    closeAllForShutdown()
                }
                // The steps run on the clock: poll without waiting, a millisecond apart.
                if lws_service(context, -1) < 0 { break }
                usleep(1000)
                continue
            }
            if lws_service(context, 0) < 0 { break }
        }
        completions.context = nil
        lws_context_destroy(context)
        self.context = nil
        connections.removeAll()
        connectionIDs.removeAll()
    }

    /// protocols[0] answers HTTP and refuses WebSocket upgrades without `parley.v1`;
    /// protocols[1] is `parley.v1`. The array ends with a zeroed entry.
    private static func makeProtocols() -> UnsafeMutablePointer<lws_protocols> {
        let protocols = UnsafeMutablePointer<lws_protocols>.allocate(capacity: 3)
        protocols.initialize(repeating: lws_protocols(), count: 3)
        protocols[0].name = UnsafePointer(strdup("http"))
        protocols[0].callback = { wsi, reason, user, input, length in
            relayCallback(wsi, reason, user, input, length)
        }
        protocols[1].name = UnsafePointer(strdup(ProtocolConstants.subprotocol))
        protocols[1].callback = { wsi, reason, user, input, length in
            relayCallback(wsi, reason, user, input, length)
        }
        protocols[1].per_session_data_size = MemoryLayout<UInt64>.size
        // lws gives every connection an rx buffer of this size: kept small so an idle
        // connection costs little (a large frame just arrives in more pieces, which
        // `receive` reassembles). tx_packet_size lets one send() take a whole frame —
        // up to a 1 MiB history page — instead of rx_buffer_size bytes.
        protocols[1].rx_buffer_size = 1024
        protocols[1].tx_packet_size = (1 << 20) + 65_536
        return protocols
    }
}

/// Why the relay could not start.
public struct RelayError: Error, CustomStringConvertible {
    public let message: String
    public var description: String { message }
}

/// The one callback lws calls, on the service thread, for both protocols.
private func relayCallback(
    _ wsi: OpaquePointer?, _ reason: lws_callback_reasons, _ user: UnsafeMutableRawPointer?,
    _ input: UnsafeMutableRawPointer?, _ length: Int
) -> Int32 {
    guard let wsi, let context = lws_get_context(wsi), let owner = lws_context_user(context) else { return 0 }
    let relay = Unmanaged<Relay>.fromOpaque(owner).takeUnretainedValue()
    return relay.handleCallback(wsi: wsi, reason: reason, user: user, input: input, length: length)
}
