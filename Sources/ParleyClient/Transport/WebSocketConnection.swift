import Foundation

/// One WebSocket connection to a relay (`ws://` or `wss://`, subprotocol `parley.v1`),
/// on a libwebsockets client context with its own service thread.
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
    }

    /// Connects; returns when the handshake completed, throws `ConnectError` when it failed
    /// or did not finish within `timeout` seconds.
    public func open(timeout: Double = 10) async throws {
        throw ConnectError(description: "not built yet")
    }

    /// Queues a text frame. Returns false when the connection is closed (nothing queued).
    @discardableResult
    public func send(_ text: [UInt8]) -> Bool {
        false
    }

    /// Closes with 1000 (normal closure); `incoming` then ends with `.closed`.
    public func close() {}

    private let url: URL
    private let caFile: String?
    private let continuation: AsyncStream<Incoming>.Continuation
}
