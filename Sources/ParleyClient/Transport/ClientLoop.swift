import CLibWebSockets
import Foundation

/// One libwebsockets client context and the thread that services it (`parley-client-lws`),
/// shared by every `WebSocketConnection` with the same CA file.
///
/// Only this thread calls `lws_*` (other threads call `lws_cancel_service`). Connections
/// hand it commands (connect, send, close) through a locked queue; it runs them in
/// `LWS_CALLBACK_EVENT_WAIT_CANCELLED`. Loops live for the rest of the process.
final class ClientLoop: @unchecked Sendable {
    enum Command {
        case connect(WebSocketConnection)
        case send(UInt64)
        case close(UInt64)
    }

    private static let registryLock = NSLock()
    nonisolated(unsafe) private static var loops: [String: ClientLoop] = [:]   // guarded by registryLock

    /// The loop for connections trusting `caFile` (nil: the system's trust store).
    static func shared(caFile: String?) throws -> ClientLoop {
        try registryLock.withLock {
            if let loop = loops[caFile ?? ""] { return loop }
            let loop = try ClientLoop(caFile: caFile)
            loops[caFile ?? ""] = loop
            return loop
        }
    }

    private let lock = NSLock()
    private var commands: [Command] = []                  // guarded by lock
    nonisolated(unsafe) private var context: OpaquePointer?

    // Service-thread state.
    private var connections: [UInt64: WebSocketConnection] = [:]
    private var protocols: UnsafeMutablePointer<lws_protocols>

    private init(caFile: String?) throws {
        protocols = UnsafeMutablePointer<lws_protocols>.allocate(capacity: 2)
        protocols.initialize(repeating: lws_protocols(), count: 2)
        protocols[0].name = UnsafePointer(strdup("parley-client"))
        protocols[0].callback = { wsi, reason, user, input, length in
            clientCallback(wsi, reason, user, input, length)
        }
        protocols[0].rx_buffer_size = 65_536

        let ready = DispatchSemaphore(value: 0)
        let thread = Thread { [self] in
            // Kept for the life of the context (and so of the process).
            let caCopy = caFile.flatMap { strdup($0) }
            var info = lws_context_creation_info()
            info.port = -1   // CONTEXT_PORT_NO_LISTEN: a client-only context
            info.protocols = UnsafePointer(protocols)
            info.user = Unmanaged.passUnretained(self).toOpaque()
            info.options = parley_lws_server_options(1)
            if let caCopy { info.client_ssl_ca_filepath = UnsafePointer(caCopy) }
            lws_set_log_level(Int32(LLL_ERR), nil)
            context = lws_create_context(&info)
            ready.signal()
            guard let context else { return }
            while true {
                if lws_service(context, 0) < 0 { break }
            }
        }
        thread.name = "parley-client-lws"
        thread.start()
        ready.wait()
        guard context != nil else {
            throw WebSocketConnection.ConnectError(description: "cannot create the libwebsockets client context")
        }
    }

    /// Hands the service thread a command (any thread).
    func post(_ command: Command) {
        lock.withLock { commands.append(command) }
        if let context { lws_cancel_service(context) }
    }

    // MARK: Service thread

    fileprivate func handle(wsi: OpaquePointer?, reason: lws_callback_reasons,
                            input: UnsafeMutableRawPointer?, length: Int) -> Int32 {
        if reason == LWS_CALLBACK_EVENT_WAIT_CANCELLED {
            runCommands()
            return 0
        }
        guard let wsi, let tag = lws_get_opaque_user_data(wsi) else { return 0 }
        let id = UInt64(UInt(bitPattern: tag))
        guard let connection = connections[id] else { return reason == LWS_CALLBACK_CLIENT_WRITEABLE ? -1 : 0 }

        switch reason {
        case LWS_CALLBACK_CLIENT_ESTABLISHED:
            connection.serviceEstablished()
        case LWS_CALLBACK_CLIENT_CONNECTION_ERROR:
            let detail = input.map { String(cString: $0.assumingMemoryBound(to: CChar.self)) } ?? "connection failed"
            connections.removeValue(forKey: id)
            connection.serviceFailed(detail)
        case LWS_CALLBACK_CLIENT_RECEIVE:
            if lws_is_first_fragment(wsi) != 0 { connection.inbound.removeAll(keepingCapacity: true) }
            if let input, length > 0 {
                connection.inbound.append(contentsOf: UnsafeRawBufferPointer(start: input, count: length))
            }
            if lws_is_final_fragment(wsi) != 0 && lws_remaining_packet_payload(wsi) == 0 {
                connection.serviceReceived(connection.inbound)
                connection.inbound.removeAll(keepingCapacity: connection.inbound.capacity <= 65_536)
            }
        case LWS_CALLBACK_WS_PEER_INITIATED_CLOSE:
            if let input, length >= 2 {
                let bytes = UnsafeRawBufferPointer(start: input, count: length)
                connection.closeCode = UInt16(bytes[0]) << 8 | UInt16(bytes[1])
                connection.closeReason = String(decoding: bytes.dropFirst(2), as: UTF8.self)
            }
        case LWS_CALLBACK_CLIENT_WRITEABLE:
            if connection.closeRequested {
                var reason = Array("bye".utf8)
                lws_close_reason(wsi, LWS_CLOSE_STATUS_NORMAL, &reason, reason.count)
                return -1
            }
            guard var frame = connection.nextOutgoing() else { return 0 }
            let payloadCount = frame.count - WebSocketConnection.headroom
            let written = frame.withUnsafeMutableBufferPointer { buffer -> Int32 in
                guard let base = buffer.baseAddress else { return -1 }
                return lws_write(wsi, base + WebSocketConnection.headroom, payloadCount, LWS_WRITE_TEXT)
            }
            if written < Int32(payloadCount) { return -1 }
            if connection.hasOutgoing { lws_callback_on_writable(wsi) }
        case LWS_CALLBACK_CLIENT_CLOSED:
            connections.removeValue(forKey: id)
            connection.serviceClosed()
        default:
            break
        }
        return 0
    }

    private func runCommands() {
        let pending = lock.withLock {
            let taken = commands
            commands.removeAll()
            return taken
        }
        for command in pending {
            switch command {
            case .connect(let connection):
                connect(connection)
            case .send(let id):
                if let wsi = connections[id]?.wsi { lws_callback_on_writable(wsi) }
            case .close(let id):
                guard let connection = connections[id] else { continue }
                connection.closeRequested = true
                if let wsi = connection.wsi { lws_callback_on_writable(wsi) }
            }
        }
    }

    private func connect(_ connection: WebSocketConnection) {
        guard let context else { return connection.serviceFailed("no client context") }
        let url = connection.url
        let secure = url.scheme == "wss"
        let host = url.host ?? "127.0.0.1"
        let port = url.port ?? (secure ? 443 : 80)
        var path = url.path.isEmpty ? "/" : url.path
        if let query = url.query { path += "?" + query }
        let hostHeader = port == (secure ? 443 : 80) ? host : "\(host):\(port)"

        connections[connection.id] = connection
        var wsi: OpaquePointer?
        host.withCString { address in
            path.withCString { pathPointer in
                hostHeader.withCString { hostPointer in
                    "parley.v1".withCString { subprotocol in
                        var info = lws_client_connect_info()
                        info.context = context
                        info.address = address
                        info.port = Int32(port)
                        info.ssl_connection = secure ? Int32(LCCSCF_USE_SSL.rawValue) : 0
                        info.path = pathPointer
                        info.host = hostPointer
                        info.origin = hostPointer
                        info.protocol = subprotocol
                        info.ietf_version_or_minus_one = -1
                        info.opaque_user_data = UnsafeMutableRawPointer(bitPattern: UInt(connection.id))
                        // Through pwsi: lws clears it if the attempt dies inside the call.
                        withUnsafeMutablePointer(to: &wsi) { pointer in
                            info.pwsi = pointer
                            _ = lws_client_connect_via_info(&info)
                        }
                    }
                }
            }
        }
        guard let wsi else {
            // CONNECTION_ERROR may already have reported it; report once either way.
            if connections.removeValue(forKey: connection.id) != nil {
                connection.serviceFailed("cannot connect to \(url.absoluteString)")
            }
            return
        }
        connection.wsi = wsi
    }
}

/// The one callback of the client context, on its service thread.
private func clientCallback(
    _ wsi: OpaquePointer?, _ reason: lws_callback_reasons, _ user: UnsafeMutableRawPointer?,
    _ input: UnsafeMutableRawPointer?, _ length: Int
) -> Int32 {
    guard let wsi, let context = lws_get_context(wsi), let owner = lws_context_user(context) else { return 0 }
    return Unmanaged<ClientLoop>.fromOpaque(owner).takeUnretainedValue()
        .handle(wsi: wsi, reason: reason, input: input, length: length)
}
