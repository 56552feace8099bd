import CLibWebSockets
import Foundation

/// Everything a loop's service thread works on: its peers, its connect queue, its
/// measurements. Guarded by the owning `BenchLoop`'s state lock. Not Sendable.
final class LoopState {
    let settings: RunSettings
    var peers: [Peer] = []
    var recorder = Recorder()
    /// Peers waiting for a connection attempt, oldest first.
    var connectQueue: [Int] = []
    var connectQueueHead = 0
    /// Set at the end of the run: closes are final.
    var finishing = false
    /// Peers connecting, authenticating or subscribing (kept by `Peer.phase`).
    var inProgress = 0
    /// Indices of the open-loop senders, and the earliest time one of them is due
    /// (CLOCK_MONOTONIC ns; `UInt64.max`: none). The pacer thread sleeps until then.
    var pacedSenders: [Int] = []
    var nextSendAt = UInt64.max

    init(settings: RunSettings) {
        self.settings = settings
    }
}

/// One libwebsockets client context and its service thread (`parley-bench-lws-N`),
/// driving many `Peer`s. Loops live for the rest of the process.
///
/// Only the service thread calls `lws_*` (the main thread calls `lws_cancel_service`).
/// The main thread hands it `Command`s through a locked queue, run in
/// `LWS_CALLBACK_EVENT_WAIT_CANCELLED`, and reads its state with `inspect`. The service
/// thread holds the state lock for every callback; callbacks can nest (a connect attempt
/// may report its failure at once), so the lock is recursive.
final class BenchLoop: @unchecked Sendable {
    enum Command {
        /// Adopt these peers and connect them (at most `connectConcurrency` at a time).
        case open([Peer])
        /// Senders start their schedules at `start`; samples before `measureFrom` are dropped.
        case startSending(start: UInt64, measureFrom: UInt64)
        case stopSending
        /// Every subscriber that does not send drops its connection at once and resumes.
        case dropSubscribers
        /// Retry the connections that are due.
        case tick
        /// Queue the open-loop messages that are due (from the pacer thread).
        case pace
        /// Close everything for good.
        case closeAll
    }

    static let headroom = Int(parley_lws_pre())
    /// Failed connection attempts before a peer gives up.
    static let maxAttempts = 5

    let index: Int

    private let commandLock = NSLock()
    private var commands: [Command] = []                // guarded by commandLock

    private let stateLock = NSRecursiveLock()
    private let state: LoopState                         // guarded by stateLock

    nonisolated(unsafe) private var context: OpaquePointer?   // written once before `init` returns
    private let protocols: UnsafeMutablePointer<lws_protocols>

    /// Whether the context runs on libuv (else lws's own poll() loop).
    private let useLibuv: Bool

    init(index: Int, settings: RunSettings, secure: Bool) throws {
        self.index = index
        useLibuv = settings.useLibuv
        state = LoopState(settings: settings)
        protocols = UnsafeMutablePointer<lws_protocols>.allocate(capacity: 2)
        protocols.initialize(repeating: lws_protocols(), count: 2)
        protocols[0].name = UnsafePointer(strdup("parley-bench"))
        protocols[0].callback = { wsi, reason, _, input, length in
            benchCallback(wsi, reason, input, length)
        }
        protocols[0].rx_buffer_size = settings.rxBufferSize

        let ready = DispatchSemaphore(value: 0)
        let thread = Thread { [self] in
            var info = lws_context_creation_info()
            info.port = -1   // CONTEXT_PORT_NO_LISTEN: a client-only context
            info.protocols = UnsafePointer(protocols)
            info.user = Unmanaged.passUnretained(self).toOpaque()
            // libuv: epoll instead of a poll() over every socket at each wake-up, which
            // dominates with thousands of connections.
            info.options = parley_lws_server_options(secure ? 1 : 0) | (useLibuv ? parley_lws_option_libuv() : 0)
            lws_set_log_level(Int32(LLL_ERR), nil)
            context = lws_create_context(&info)
            ready.signal()
            guard let context else { return }
            // With libuv, lws_service runs the uv loop and does not return.
            while lws_service(context, 0) >= 0 {}
        }
        thread.name = "parley-bench-lws-\(index)"
        thread.start()
        ready.wait()
        guard context != nil else { throw BenchError.setup("cannot create a libwebsockets client context") }

        let pacer = Thread { [self] in pace() }
        pacer.name = "parley-bench-pacer-\(index)"
        pacer.start()
    }

    /// The pacer thread: sleeps until the next open-loop message is due, then has the
    /// service thread queue it. lws timers are not used for this: on libuv they have
    /// millisecond resolution and spin through the last millisecond before each deadline.
    /// At least 50 µs pass between two wake-ups; messages due meanwhile go out together,
    /// with their scheduled times.
    private func pace() {
        var lastWake: UInt64 = 0
        while true {
            let (due, paced) = inspect { ($0.nextSendAt, !$0.pacedSenders.isEmpty) }
            let now = Clock.now()
            // Without a deadline, look again soon (a schedule may start); without open-loop
            // senders, rarely.
            let idle: UInt64 = paced ? 1_000_000 : 100_000_000
            let wake = due == .max ? now + idle : max(min(due, now + idle), lastWake + 50_000)
            if wake > now {
                var until = timespec(tv_sec: Int(wake / 1_000_000_000), tv_nsec: Int(wake % 1_000_000_000))
                while clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &until, nil) == EINTR {}
            }
            lastWake = Clock.now()
            if due != .max, lastWake >= due { post(.pace) }
        }
    }

    /// Hands the service thread a command (any thread).
    func post(_ command: Command) {
        commandLock.withLock { commands.append(command) }
        if let context { lws_cancel_service(context) }
    }

    /// Runs `body` on the loop's state under its lock (main or pacer thread; keep it short).
    func inspect<T>(_ body: (LoopState) -> T) -> T {
        stateLock.withLock { body(state) }
    }

    // MARK: Service thread

    fileprivate func handle(wsi: OpaquePointer?, reason: lws_callback_reasons,
                            input: UnsafeMutableRawPointer?, length: Int) -> Int32 {
        stateLock.lock()
        defer { stateLock.unlock() }
        if reason == LWS_CALLBACK_EVENT_WAIT_CANCELLED {
            runCommands()
            return 0
        }
        guard let wsi, let tag = lws_get_opaque_user_data(wsi) else { return 0 }
        let peerIndex = Int(bitPattern: UInt(bitPattern: tag)) - 1
        guard state.peers.indices.contains(peerIndex) else { return 0 }
        let peer = state.peers[peerIndex]
        // A callback of an earlier connection of this peer.
        if let current = peer.wsi, current != wsi { return reason == LWS_CALLBACK_CLIENT_WRITEABLE ? -1 : 0 }

        switch reason {
        case LWS_CALLBACK_CLIENT_ESTABLISHED:
            peer.wsi = wsi
            peer.closeCode = nil
            peer.established(state)
            afterProgress()
        case LWS_CALLBACK_CLIENT_CONNECTION_ERROR:
            let detail = input.map { String(cString: $0.assumingMemoryBound(to: CChar.self)) } ?? "connection failed"
            connectionLost(peer, detail: "connect failed: \(detail)")
        case LWS_CALLBACK_CLIENT_RECEIVE:
            let before = peer.phase
            received(peer, wsi: wsi, input: input, length: length)
            if peer.phase != before { afterProgress() }
        case LWS_CALLBACK_WS_PEER_INITIATED_CLOSE:
            if let input, length >= 2 {
                let bytes = UnsafeRawBufferPointer(start: input, count: length)
                peer.closeCode = UInt16(bytes[0]) << 8 | UInt16(bytes[1])
            }
        case LWS_CALLBACK_CLIENT_WRITEABLE:
            return peer.writeNext(wsi, state) ? 0 : -1
        case LWS_CALLBACK_CLIENT_CLOSED:
            connectionLost(peer, detail: "closed")
        default:
            break
        }
        return 0
    }

    private func received(_ peer: Peer, wsi: OpaquePointer, input: UnsafeMutableRawPointer?, length: Int) {
        let first = lws_is_first_fragment(wsi) != 0
        let complete = lws_is_final_fragment(wsi) != 0 && lws_remaining_packet_payload(wsi) == 0
        if first && complete {
            // The common case: the whole message in one callback, read in place.
            peer.received(UnsafeRawBufferPointer(start: input, count: input == nil ? 0 : length), state)
            return
        }
        if first { peer.inbound.removeAll(keepingCapacity: true) }
        if let input, length > 0 {
            peer.inbound.append(contentsOf: UnsafeRawBufferPointer(start: input, count: length))
        }
        if complete {
            peer.inbound.withUnsafeBytes { peer.received($0, state) }
            peer.inbound.removeAll(keepingCapacity: peer.inbound.capacity <= 262_144)
        }
    }

    /// A connection attempt failed or a connection closed: count it, then retry, resume
    /// or stop, as the peer's phase and the run say.
    private func connectionLost(_ peer: Peer, detail: String) {
        let wasPhase = peer.phase
        let wasReady = wasPhase == .ready
        let dropped = peer.reconnectWhenClosed
        peer.connectionEnded(state)
        peer.reconnectWhenClosed = false

        if state.finishing || wasPhase == .finished {
            peer.phase = .finished
        } else if wasPhase == .failed {
            // Refused by the relay: stays failed.
        } else if dropped {
            // A deliberate drop: resume at once.
            peer.phase = .idle
            queueConnect(peer, delay: 0)
        } else {
            let code = peer.closeCode.map { "close_\($0)" } ?? (wasReady ? "connection_lost" : "connect_failed")
            state.recorder.count(close: code)
            peer.lastError = detail
            peer.phase = .idle
            if wasReady {
                queueConnect(peer, delay: 0.2)
            } else if peer.attempts >= Self.maxAttempts {
                peer.phase = .failed
            } else {
                queueConnect(peer, delay: 0.5 * Double(peer.attempts))
            }
        }
        afterProgress()
    }

    private func queueConnect(_ peer: Peer, delay: Double) {
        peer.retryAt = Clock.now() + UInt64(delay * 1e9)
        state.connectQueue.append(peer.index)
    }

    /// Starts queued connection attempts while fewer than the limit are in progress.
    private func afterProgress() {
        let now = Clock.now()
        var deferred: [Int] = []
        while state.inProgress < state.settings.connectConcurrency, state.connectQueueHead < state.connectQueue.count {
            let peer = state.peers[state.connectQueue[state.connectQueueHead]]
            state.connectQueueHead += 1
            guard peer.phase == .idle else { continue }
            if peer.retryAt > now {
                deferred.append(peer.index)
                continue
            }
            connect(peer)
        }
        if state.connectQueueHead > 4096, state.connectQueueHead * 2 > state.connectQueue.count {
            state.connectQueue.removeFirst(state.connectQueueHead)
            state.connectQueueHead = 0
        }
        state.connectQueue.append(contentsOf: deferred)
    }

    private func runCommands() {
        let pending = commandLock.withLock {
            let taken = commands
            commands.removeAll()
            return taken
        }
        for command in pending {
            switch command {
            case .open(let peers):
                for peer in peers {
                    precondition(peer.index == state.peers.count, "peers are numbered in the order they are opened")
                    peer.owner = state
                    state.peers.append(peer)
                    if let sends = peer.plan.sends, sends.rate > 0 { state.pacedSenders.append(peer.index) }
                    state.connectQueue.append(peer.index)
                }
            case .startSending(let start, let measureFrom):
                state.recorder.measureFrom = measureFrom
                for peer in state.peers where peer.isSender { peer.startSending(at: start, state) }
            case .stopSending:
                for peer in state.peers where peer.isSender { peer.stopSending() }
            case .dropSubscribers:
                for peer in state.peers where !peer.isSender && !peer.subscriptions.isEmpty && peer.wsi != nil {
                    peer.requestClose(reconnect: true)
                }
            case .tick:
                break
            case .pace:
                let now = Clock.now()
                state.nextSendAt = .max
                for index in state.pacedSenders { state.peers[index].sendDue(state, now: now) }
            case .closeAll:
                state.finishing = true
                for peer in state.peers {
                    if peer.wsi != nil {
                        peer.requestClose(reconnect: false)
                    } else if peer.phase == .idle {
                        peer.phase = .finished
                    }
                }
            }
        }
        afterProgress()
    }

    private func connect(_ peer: Peer) {
        guard let context else { return }
        let url = peer.plan.url
        let secure = url.scheme == "wss"
        let host = url.host ?? "127.0.0.1"
        let port = url.port ?? (secure ? 443 : 80)
        var path = url.path.isEmpty ? "/" : url.path
        if let query = url.query { path += "?" + query }
        let hostHeader = port == (secure ? 443 : 80) ? host : "\(host):\(port)"

        peer.phase = .connecting
        peer.attempts += 1
        peer.attemptStartedAt = Clock.now()
        var wsi: OpaquePointer?
        withOptionalCString(peer.plan.isRaw ? nil : "parley.v1") { subprotocol in
            withOptionalCString(peer.plan.sourceAddress) { source in
                host.withCString { address in
                    path.withCString { pathPointer in
                        hostHeader.withCString { hostPointer in
                            var info = lws_client_connect_info()
                            info.context = context
                            info.address = address
                            info.port = Int32(port)
                            info.ssl_connection = secure
                                ? Int32(LCCSCF_USE_SSL.rawValue | LCCSCF_ALLOW_SELFSIGNED.rawValue
                                        | LCCSCF_SKIP_SERVER_CERT_HOSTNAME_CHECK.rawValue)
                                : 0
                            info.path = pathPointer
                            info.host = hostPointer
                            info.origin = hostPointer
                            info.protocol = subprotocol
                            info.iface = source
                            info.ietf_version_or_minus_one = -1
                            info.opaque_user_data = UnsafeMutableRawPointer(bitPattern: UInt(peer.index + 1))
                            withUnsafeMutablePointer(to: &wsi) { pointer in
                                info.pwsi = pointer
                                _ = lws_client_connect_via_info(&info)
                            }
                        }
                    }
                }
            }
        }
        // CONNECTION_ERROR may already have been handled inside the call (phase changed).
        guard peer.phase == .connecting else { return }
        if let wsi {
            peer.wsi = wsi
        } else {
            connectionLost(peer, detail: "cannot start a connection to \(url.absoluteString)")
        }
    }
}

private func withOptionalCString<T>(_ string: String?, _ body: (UnsafePointer<CChar>?) -> T) -> T {
    guard let string else { return body(nil) }
    return string.withCString { body($0) }
}

/// The one callback of every bench context, on that context's service thread.
private func benchCallback(
    _ wsi: OpaquePointer?, _ reason: lws_callback_reasons,
    _ input: UnsafeMutableRawPointer?, _ length: Int
) -> Int32 {
    guard let wsi, let context = lws_get_context(wsi), let owner = lws_context_user(context) else { return 0 }
    return Unmanaged<BenchLoop>.fromOpaque(owner).takeUnretainedValue()
        .handle(wsi: wsi, reason: reason, input: input, length: length)
}
