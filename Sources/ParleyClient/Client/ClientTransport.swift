import Foundation

/// What `ParleyClient` needs of one connection. `WebSocketConnection` in production;
/// unit tests substitute a scripted one.
protocol ClientTransport: AnyObject, Sendable {
    /// Frames, then one `.closed`.
    var incoming: AsyncStream<WebSocketConnection.Incoming> { get }
    func open(timeout: Double) async throws
    /// False when the connection is not open (nothing queued).
    @discardableResult func send(_ text: [UInt8]) -> Bool
    func close()
}

extension WebSocketConnection: ClientTransport {}
