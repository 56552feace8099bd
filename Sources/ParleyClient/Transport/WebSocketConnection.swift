import CLibWebSockets
import Foundation

/// One WebSocket connection to a relay (`ws://` or `wss://`, subprotocol `parley.v1`),
/// on a libwebsockets client context with its own service thread (`ClientLoop`).
///
/// Thread-safe: `send` and `close` may be called from any thread or task; incoming frames
/// and the end of the connection arrive in order on `incoming`. One connection per
/// instance: after it closed, make a new one (`ParleyClient` does, with backoff).
public final class WebSocketConnection: @unchecked Sendable {
    /// What arrives from the relay.
    public enum Incoming: Sendable, Equatable {
        /// One complete text message (a JSON frame).
        case text([UInt8])
        /// The connection ended: the close code the relay sent (nil when the socket just
        /// dropped) and its reason. Nothing follows.
        case closed(code: UInt16?, reason: String)
    }

    public struct ConnectError: Error, CustomStringConvertible, Sendable {
        public let description: String
    }

    /// Frames from the relay, then one `.closed`.
    public let incoming: AsyncStream<Incoming>

    /// `url`: e.g. `ws://127.0.0.1:8080/ws`. `caFile`: PEM file of the CA that signed the
    /// relay's certificate (wss only); the system's trust store when nil.
    public init(url: URL, caFile: String? = nil) {
        (incoming, continuation) = AsyncStream.makeStream(of: Incoming.self, bufferingPolicy: .unbounded)
        self.url = url
        self.caFile = caFile
        id = Self.idLock.withLock {
            Self.lastID += 1
            return Self.lastID
        }
    }

    /// Connects; returns when the handshake completed, throws `ConnectError` when it failed
    /// or did not finish within `timeout` seconds.
    public func open(timeout: Double = 10) async throws {
        guard let scheme = url.scheme, scheme == "ws" || scheme == "wss", url.host != nil else {
            throw ConnectError(description: "not a ws:// or wss:// URL: \(url.absoluteString)")
        }
        let loop = try ClientLoop.shared(caFile: caFile)
        let outcome: Result<Void, ConnectError> = await withCheckedContinuation { waiter in
            let accepted = lock.withLock { () -> Bool in
                guard state == .new else { return false }
                state = .connecting
                opening = waiter
                self.loop = loop
                return true
            }
            guard accepted else {
                return waiter.resume(returning: .failure(ConnectError(description: "open() may be called once")))
            }
            loop.post(.connect(self))
            Task { [weak self] in
                try? await Task.sleep(nanoseconds: UInt64(timeout * 1_000_000_000))
                self?.finishOpening(.failure(ConnectError(description: "no handshake within \(timeout) s")), closeIfOpen: true)
            }
        }
        try outcome.get()
    }

    /// Queues a text frame. Returns false when the connection is not open (nothing queued).
    @discardableResult
    public func send(_ text: [UInt8]) -> Bool {
        var frame = [UInt8](repeating: 0, count: Self.headroom)
        frame.append(contentsOf: text)
        let loop: ClientLoop? = lock.withLock {
            guard state == .open else { return nil }
            outgoing.append(frame)
            return self.loop
        }
        guard let loop else { return false }
        loop.post(.send(id))
        return true
    }

    /// Closes with 1000 (normal closure); `incoming` then ends with `.closed`.
    public func close() {
        let loop: ClientLoop? = lock.withLock {
            switch state {
            case .new:
                state = .closed
                return nil
            case .closed:
                return nil
            case .connecting, .open:
                return self.loop
            }
        }
        guard let loop else {
            continuation.finish()
            return
        }
        loop.post(.close(id))
    }

    // MARK: - State

    static let headroom = Int(parley_lws_pre())
    nonisolated(unsafe) private static var lastID: UInt64 = 0   // guarded by idLock
    private static let idLock = NSLock()

    enum State { case new, connecting, open, closed }

    let id: UInt64
    let url: URL
    private let caFile: String?
    private let continuation: AsyncStream<Incoming>.Continuation

    private let lock = NSLock()
    private var state = State.new                                            // guarded by lock
    private var opening: CheckedContinuation<Result<Void, ConnectError>, Never>?  // guarded by lock
    private var outgoing: [[UInt8]] = []                                     // guarded by lock
    private var loop: ClientLoop?                                            // guarded by lock

    // Touched only by the loop's service thread.
    var wsi: OpaquePointer?
    var inbound: [UInt8] = []
    var closeCode: UInt16?
    var closeReason = ""
    var closeRequested = false

    private func finishOpening(_ result: Result<Void, ConnectError>, closeIfOpen: Bool = false) {
        let (waiter, loop): (CheckedContinuation<Result<Void, ConnectError>, Never>?, ClientLoop?) = lock.withLock {
            let waiter = opening
            opening = nil
            if waiter != nil, case .failure = result, closeIfOpen, state == .connecting { return (waiter, self.loop) }
            return (waiter, nil)
        }
        waiter?.resume(returning: result)
        if let loop { loop.post(.close(id)) }
    }

    // MARK: - Called by the loop's service thread

    func serviceEstablished() {
        lock.withLock { if state == .connecting { state = .open } }
        finishOpening(.success(()))
    }

    func serviceFailed(_ detail: String) {
        lock.withLock { state = .closed }
        finishOpening(.failure(ConnectError(description: detail)))
        continuation.yield(.closed(code: nil, reason: detail))
        continuation.finish()
    }

    func serviceReceived(_ text: [UInt8]) {
        continuation.yield(.text(text))
    }

    func serviceClosed() {
        lock.withLock {
            state = .closed
            outgoing.removeAll()
        }
        finishOpening(.failure(ConnectError(description: "closed during the handshake")))
        continuation.yield(.closed(code: closeCode, reason: closeReason))
        continuation.finish()
    }

    func nextOutgoing() -> [UInt8]? {
        lock.withLock { outgoing.isEmpty ? nil : outgoing.removeFirst() }
    }

    var hasOutgoing: Bool { lock.withLock { !outgoing.isEmpty } }
}
