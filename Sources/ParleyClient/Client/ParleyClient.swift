import Foundation
import ParleyCrypto
import ParleyProtocol

/// The Parley client SDK: one account on one relay, end to end encrypted.
///
/// An actor: every piece of state below is isolated to it. Frames from the relay are read
/// by a task on the actor in arrival order: replies resume their requests (matched by
/// `re`), events go, in order, to a second task that decrypts and verifies them — that one
/// may itself send requests (a key, a chain, a sender's public key) without blocking the
/// reader. What it accepts comes out of `events`.
///
/// Trust: a member list is used only as read from the membership chain verified from
/// version 1 (`MembershipRules` plus signatures by pinned keys); public keys are pinned
/// on first sight and a changed key is refused loudly; channel keys are accepted only
/// when signed by a member of their membership version and matching their digest.
///
/// Connection: opened on first use; after a drop it reconnects with exponential backoff
/// and jitter, `auth`s with the session and resubscribes every followed channel from the
/// last `seq` delivered, so `events` shows every message once, in order.
public actor ParleyClient {
    /// Decoded, decrypted and verified events. One consumer; buffered without bound.
    public nonisolated let events: AsyncStream<ClientEvent>

    let configuration: ClientConfiguration
    let pins: KeyPinStore
    private let makeTransport: @Sendable () -> any ClientTransport
    let eventSink: AsyncStream<ClientEvent>.Continuation
    private let inbox: AsyncStream<Inbound>
    let inboxSink: AsyncStream<Inbound>.Continuation
    private var processor: Task<Void, Never>?

    // MARK: Connection state

    private var transport: (any ClientTransport)?
    /// Bumped for each adopted connection; frames of an older one are ignored.
    private var generation = 0
    /// The current connection carries the session.
    var authenticated = false
    /// A reconnect is re-establishing the session and subscriptions.
    private var resuming = false
    private var connecting: Task<Void, Error>?
    private var reconnecting: Task<Void, Never>?
    private var closedForGood = false
    /// The relay ended the session (4001 or a refused `auth`): no more reconnects.
    var sessionEnded = false
    private var pending: [String: PendingRequest] = [:]
    private var requestCounter = 0
    private var stateWaiters: [Int: CheckedContinuation<Void, Never>] = [:]
    private var waiterCounter = 0

    // MARK: Account, trust, keys, delivery (see the extensions)

    var identity: Identity?
    /// Pinned public keys, parsed.
    var publicKeys: [ID: RSAPublicKey] = [:]
    /// Verified membership chains.
    var chains: [ID: MembershipChain] = [:]
    /// Accepted channel keys by key id.
    var channelKeys: [ID: ChannelKey] = [:]
    /// The key to send with, per channel.
    var sendKeys: [ID: ID] = [:]
    /// One key establishment (fetch or rotation) per channel at a time.
    var sendKeyTasks: [ID: Task<ChannelKey, Error>] = [:]
    var replayGuard = ReplayGuard()
    /// Channels to resubscribe after a reconnect.
    var followed: Set<ID> = []
    /// The last `seq` delivered on `events`, per channel.
    var lastDelivered: [ID: Int] = [:]

    /// How often the recovery paths ran (for tests and diagnostics).
    struct Statistics: Sendable, Equatable {
        var rotations = 0
        var keyConflicts = 0
        var keyExpiredRetries = 0
        var duplicateSends = 0
        var reconnects = 0
    }

    var statistics = Statistics()

    /// Work for the event task, in the order the relay sent it.
    enum Inbound: Sendable {
        case event(Event)
        /// A `subscribe` reply for one channel: `replay` tells whether `after` was given.
        case subscribed(channelID: ID, lastSeq: Int, replay: Bool, recovered: Bool)
    }

    private struct PendingRequest {
        var type: RequestType
        var request: Request
        var continuation: CheckedContinuation<Response, Error>
        var timer: Task<Void, Never>
    }

    /// What a request needs before it can go out.
    enum Readiness {
        /// An open connection (signup, login, auth).
        case connection
        /// An open connection carrying the session.
        case session
    }

    // MARK: - Life cycle

    /// A client of the relay at `url` (e.g. `ws://127.0.0.1:8080/ws`); `caFile` is the CA
    /// of a `wss://` relay's certificate (the system store when nil). Nothing connects
    /// until the first request.
    public init(url: URL, caFile: String? = nil, configuration: ClientConfiguration = ClientConfiguration()) {
        self.init(configuration: configuration) { WebSocketConnection(url: url, caFile: caFile) }
    }

    /// With another transport (unit tests).
    init(configuration: ClientConfiguration, makeTransport: @escaping @Sendable () -> any ClientTransport) {
        self.configuration = configuration
        self.pins = configuration.pins ?? KeyPinStore()
        self.makeTransport = makeTransport
        (events, eventSink) = AsyncStream.makeStream(of: ClientEvent.self, bufferingPolicy: .unbounded)
        (inbox, inboxSink) = AsyncStream.makeStream(of: Inbound.self, bufferingPolicy: .unbounded)
    }

    /// Opens the connection now rather than on the first request.
    public func connect() async throws {
        _ = try await usableTransport(.connection)
    }

    /// Closes the connection for good: pending requests fail with `.closed`, no reconnect,
    /// and `events` ends.
    public func close() {
        guard !closedForGood else { return }
        closedForGood = true
        reconnecting?.cancel()
        reconnecting = nil
        let current = transport
        transport = nil
        authenticated = false
        generation += 1
        current?.close()
        failPending(.closed)
        wakeWaiters()
        eventSink.yield(.connection(.disconnected))
        eventSink.finish()
        inboxSink.finish()
        processor?.cancel()
    }

    /// Test hook: drops the socket as a network failure would (the client then reconnects).
    func dropConnectionForTesting() {
        transport?.close()
    }

    /// Whether a connection is open and carries the session.
    public var isReady: Bool { transport != nil && authenticated && !resuming }

    // MARK: - Requests

    /// Sends `request` once the connection is ready and waits for its reply. Reads that
    /// can be repeated without effect are retried when the connection drops under them.
    func send(_ request: Request, needs: Readiness = .session) async throws -> Response {
        var attempts = 0
        while true {
            let transport = try await usableTransport(needs)
            do {
                return try await exchange(request, on: transport)
            } catch ClientError.disconnected where Self.isRepeatable(request.type) && attempts < 3 {
                attempts += 1
            }
        }
    }

    private static func isRepeatable(_ type: RequestType) -> Bool {
        switch type {
        case .user, .channels, .channelMembers, .channelMembership, .key, .messages, .subscribe, .unsubscribe, .ping:
            return true
        default:
            return false
        }
    }

    /// One request on `transport`: an id, the frame, and a wait bounded by the timeout.
    func exchange(_ request: Request, on transport: any ClientTransport) async throws -> Response {
        requestCounter += 1
        let id = "c\(requestCounter)"
        let bytes = RequestFrame(id: id, request: request).encode()
        let timeout = configuration.requestTimeout
        return try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Response, Error>) in
            let timer = Task { [weak self] in
                try? await Task.sleep(nanoseconds: Self.nanoseconds(timeout))
                guard !Task.isCancelled else { return }
                await self?.expire(id)
            }
            pending[id] = PendingRequest(type: request.type, request: request, continuation: continuation, timer: timer)
            if !transport.send(bytes) {
                pending.removeValue(forKey: id)
                timer.cancel()
                continuation.resume(throwing: ClientError.disconnected)
                // The socket is gone though its close has not been read yet: treat it as
                // closed now, so callers wait for the reconnect instead of retrying on it.
                if transport === self.transport { connectionClosed(generation: generation, code: nil) }
            }
        }
    }

    private func expire(_ id: String) {
        guard let entry = pending.removeValue(forKey: id) else { return }
        entry.continuation.resume(throwing: ClientError.timeout(entry.type))
    }

    private func failPending(_ error: ClientError) {
        let entries = pending
        pending.removeAll()
        for entry in entries.values {
            entry.timer.cancel()
            entry.continuation.resume(throwing: error)
        }
    }

    // MARK: - Incoming frames (reader task, on the actor, in arrival order)

    private func receive(_ bytes: [UInt8], generation: Int) {
        guard generation == self.generation else { return }
        // Frames this SDK does not know (a newer relay's) are skipped (docs/protocol.md).
        guard let frame = try? ServerFrame.decode(bytes) else { return }
        switch frame {
        case .result(let re, let response):
            guard let entry = pending.removeValue(forKey: re) else { return }
            entry.timer.cancel()
            guard response.type == entry.type else {
                entry.continuation.resume(throwing: ClientError.unexpectedReply(
                    "a \(response.type.rawValue) result to a \(entry.type.rawValue) request"))
                return
            }
            if case .subscribe(let result) = response, case .subscribe(let asked) = entry.request {
                // Queued before any event that follows the reply, so delivery state is set
                // up in order with the replay.
                for channel in result.channels {
                    let after = asked.channels.first { $0.channelID == channel.channelID }?.after
                    inboxSink.yield(.subscribed(
                        channelID: channel.channelID, lastSeq: channel.lastSeq, replay: after != nil,
                        recovered: channel.recovered))
                }
            }
            entry.continuation.resume(returning: response)
        case .error(let error):
            guard let re = error.re, let entry = pending.removeValue(forKey: re) else { return }
            entry.timer.cancel()
            entry.continuation.resume(throwing: ClientError.relay(error))
        case .event(let event):
            inboxSink.yield(.event(event))
        }
    }

    private func connectionClosed(generation: Int, code: UInt16?) {
        guard generation == self.generation, transport != nil else { return }
        transport = nil
        authenticated = false
        failPending(.disconnected)
        if code == CloseCode.sessionEnded { sessionEnded = true }
        eventSink.yield(.connection(.disconnected))
        if shouldReconnect { startReconnecting() }
        wakeWaiters()
    }

    private var shouldReconnect: Bool {
        !closedForGood && configuration.reconnect.enabled && identity != nil && !sessionEnded
    }

    // MARK: - Connecting

    /// An open connection fit for `needs`, waiting (bounded) for one being (re)made.
    func usableTransport(_ needs: Readiness) async throws -> any ClientTransport {
        let deadline = Date().addingTimeInterval(configuration.reconnectWaitTimeout)
        while true {
            if closedForGood { throw ClientError.closed }
            switch needs {
            case .connection:
                if let transport, !resuming { return transport }
                if transport == nil, connecting == nil, reconnecting == nil {
                    return try await openFirstConnection()
                }
            case .session:
                guard identity != nil else { throw ClientError.notAuthenticated }
                if sessionEnded { throw ClientError.sessionEnded }
                if let transport, authenticated, !resuming { return transport }
                if transport != nil, !authenticated, !resuming, reconnecting == nil { throw ClientError.notAuthenticated }
                if transport == nil, connecting == nil, reconnecting == nil { startReconnecting(immediately: true) }
            }
            try await waitForStateChange(until: deadline)
        }
    }

    /// The first connection (no session to restore yet), made once for all callers.
    private func openFirstConnection() async throws -> any ClientTransport {
        let task = Task { _ = try await self.openConnection() }
        connecting = task
        defer {
            connecting = nil
            wakeWaiters()
        }
        try await task.value
        guard let transport else { throw ClientError.disconnected }
        eventSink.yield(.connection(.connected))
        return transport
    }

    /// Opens a connection and makes it the current one, with its reader task.
    private func openConnection() async throws -> any ClientTransport {
        eventSink.yield(.connection(.connecting))
        let connection = makeTransport()
        do {
            try await connection.open(timeout: configuration.connectTimeout)
        } catch {
            throw ClientError.connectFailed(String(describing: error))
        }
        guard !closedForGood else {
            connection.close()
            throw ClientError.closed
        }
        generation += 1
        let generation = self.generation
        transport = connection
        authenticated = false
        startProcessor()
        Task { [weak self] in
            for await item in connection.incoming {
                guard let self else { return }
                switch item {
                case .text(let bytes): await self.receive(bytes, generation: generation)
                case .closed(let code, _): await self.connectionClosed(generation: generation, code: code)
                }
            }
            await self?.connectionClosed(generation: generation, code: nil)
        }
        return connection
    }

    private func startReconnecting(immediately: Bool = false) {
        guard reconnecting == nil, !closedForGood else { return }
        reconnecting = Task { [weak self] in await self?.reconnectLoop(immediately: immediately) }
    }

    /// Backs off, reconnects, restores the session and the subscriptions; until it works,
    /// the session turns out to be dead, the policy gives up, or the client closes.
    private func reconnectLoop(immediately: Bool) async {
        defer {
            reconnecting = nil
            wakeWaiters()
        }
        let policy = configuration.reconnect
        var attempt = 0
        while !closedForGood && !Task.isCancelled {
            if let limit = policy.maxAttempts, attempt >= limit { return }
            if attempt > 0 || !immediately {
                let delay = policy.delay(attempt: attempt, random: Double.random(in: 0...1))
                try? await Task.sleep(nanoseconds: Self.nanoseconds(delay))
                if closedForGood || Task.isCancelled { return }
            }
            attempt += 1
            do {
                try await restoreSession()
                statistics.reconnects += 1
                eventSink.yield(.connection(.connected))
                return
            } catch ClientError.sessionEnded {
                sessionEnded = true
                return
            } catch {
                abandonConnection()
                eventSink.yield(.connection(.disconnected))
            }
        }
    }

    /// New connection, `auth`, `subscribe` from the last delivered seq of each channel.
    private func restoreSession() async throws {
        guard let identity else { throw ClientError.notAuthenticated }
        resuming = true
        defer {
            resuming = false
            wakeWaiters()
        }
        let connection = try await openConnection()
        do {
            guard case .auth = try await exchange(.auth(.init(session: identity.session)), on: connection) else {
                throw ClientError.unexpectedReply("auth")
            }
        } catch let error as ClientError where error.code == .authFailed || error.code == .unauthenticated {
            throw ClientError.sessionEnded
        }
        authenticated = true
        try await resubscribe(on: connection)
    }

    /// Resubscribes every followed channel; channels this user has left in the meantime
    /// (one of them fails the whole request with `not_member`) are dropped from the list.
    private func resubscribe(on connection: any ClientTransport) async throws {
        guard !followed.isEmpty else { return }
        func request() -> Request {
            .subscribe(.init(channels: followed.sorted().map { .init(channelID: $0, after: lastDelivered[$0]) }))
        }
        do {
            _ = try await exchange(request(), on: connection)
        } catch let error as ClientError where error.code == .notMember {
            guard case .channels(let list) = try await exchange(.channels, on: connection) else {
                throw ClientError.unexpectedReply("channels")
            }
            followed.formIntersection(list.channels.map(\.channelID))
            if !followed.isEmpty { _ = try await exchange(request(), on: connection) }
        } catch let error as ClientError where error.code == .badRequest {
            // An `after` above a channel's last_seq: the relay's history ends below what this
            // client has seen. Said loudly, then the client goes on from the relay's last_seq
            // (a subscribe without `after` tells it; the one with `after` replaces it).
            let probe = Request.subscribe(.init(channels: followed.sorted().map { .init(channelID: $0, after: nil) }))
            guard case .subscribe(let current) = try await exchange(probe, on: connection) else {
                throw ClientError.unexpectedReply("subscribe")
            }
            for entry in current.channels {
                guard let seen = lastDelivered[entry.channelID], seen > entry.lastSeq else { continue }
                alert(.historyRewound(channelID: entry.channelID, lastSeq: entry.lastSeq, seen: seen))
                lastDelivered[entry.channelID] = entry.lastSeq
            }
            _ = try await exchange(request(), on: connection)
        }
    }

    /// Forgets the current connection without waiting for its close.
    private func abandonConnection() {
        guard let current = transport else { return }
        transport = nil
        authenticated = false
        generation += 1
        failPending(.disconnected)
        current.close()
    }

    // MARK: - Waiting for the connection state to change

    private func waitForStateChange(until deadline: Date) async throws {
        let remaining = deadline.timeIntervalSinceNow
        guard remaining > 0 else { throw ClientError.connectFailed("no usable connection in time") }
        waiterCounter += 1
        let id = waiterCounter
        let timer = Task { [weak self] in
            try? await Task.sleep(nanoseconds: Self.nanoseconds(remaining))
            await self?.wakeWaiter(id)
        }
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            stateWaiters[id] = continuation
        }
        timer.cancel()
    }

    private func wakeWaiter(_ id: Int) {
        stateWaiters.removeValue(forKey: id)?.resume()
    }

    func wakeWaiters() {
        let waiters = stateWaiters
        stateWaiters.removeAll()
        for waiter in waiters.values { waiter.resume() }
    }

    // MARK: - Event task

    private func startProcessor() {
        guard processor == nil else { return }
        let inbox = self.inbox
        processor = Task { [weak self] in
            for await item in inbox {
                guard let self else { return }
                await self.process(item)
            }
        }
    }

    // MARK: - Helpers

    static func nanoseconds(_ seconds: Double) -> UInt64 {
        UInt64(max(0, min(seconds, 86_400)) * 1_000_000_000)
    }

    static var nowSeconds: Int { Int(Date().timeIntervalSince1970) }
    static var nowMilliseconds: Int { Int(Date().timeIntervalSince1970 * 1000) }

    func requireIdentity() throws -> Identity {
        guard let identity else { throw ClientError.notAuthenticated }
        return identity
    }

    /// Emits a security alert.
    func alert(_ alert: SecurityAlert) {
        eventSink.yield(.securityAlert(alert))
    }

    /// Reports a verification failure loudly and returns it as an error to throw.
    func refuse(_ failure: VerificationFailure) -> ClientError {
        alert(.verificationFailed(failure))
        return .verification(failure)
    }

    /// Starts from a fresh session: the identity is adopted and the connection carries it.
    func adopt(_ identity: Identity) throws {
        self.identity = identity
        authenticated = true
        sessionEnded = false
        _ = try trust(userID: identity.userID, publicKey: identity.privateKey.publicKey.spkiDER)
        wakeWaiters()
    }

    /// Ends the session locally (after `logout`).
    func forgetSession() {
        identity = nil
        authenticated = false
        followed.removeAll()
        wakeWaiters()
    }
}

extension ClientError {
    /// A failure of the path to the relay, not of the request: worth trying again later.
    var isTransient: Bool {
        switch self {
        case .disconnected, .timeout, .connectFailed: return true
        case .relay(let frame): return frame.code.isRetryable
        default: return false
        }
    }
}
