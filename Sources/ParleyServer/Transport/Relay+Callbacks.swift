import CLibWebSockets
import Foundation
import ParleyProtocol

// The lws callback, split by reason. Everything here runs on the service thread.
extension Relay {
    func handleCallback(
        wsi: OpaquePointer, reason: lws_callback_reasons, user: UnsafeMutableRawPointer?,
        input: UnsafeMutableRawPointer?, length: Int
    ) -> Int32 {
        switch reason {
        case LWS_CALLBACK_EVENT_WAIT_CANCELLED:
            drainCompletions()
            return 0

        case LWS_CALLBACK_FILTER_PROTOCOL_CONNECTION:
            // Only `parley.v1` on `/ws` may upgrade; protocols[0] is chosen when the client
            // offered no subprotocol we speak. Refusals get an HTTP answer, not a bare close:
            // 404 for another path (as a plain GET there), 400 without `parley.v1`.
            if requestPath(wsi) != ProtocolConstants.path {
                refuseUpgrade(wsi, status: 404, reason: "Not Found", body: "not found\n")
                return 1
            }
            if !isParleyProtocol(wsi) {
                refuseUpgrade(wsi, status: 400, reason: "Bad Request", body: "offer the subprotocol parley.v1\n")
                return 1
            }
            // Hardening: a browser page from another site may not use the socket (403);
            // past the connection limits the handshake is refused (503, then 429).
            if !configuration.allowedOrigins.isEmpty, let origin = header(wsi, WSI_TOKEN_ORIGIN),
               !configuration.allowedOrigins.contains(origin), !isOwnPage(origin, wsi) {
                refuse(wsi, .origin, status: 403, reason: "Forbidden", body: "origin not allowed\n",
                       origin: String(origin.prefix(200)))
                return 1
            }
            if draining {
                refuseUpgrade(wsi, status: 503, reason: "Service Unavailable", body: "server shutting down\n")
                return 1
            }
            if connections.count >= configuration.maxConnections {
                refuse(wsi, .maxConnections, status: 503, reason: "Service Unavailable", body: "too many connections\n")
                return 1
            }
            if addressConnections[peerAddress(wsi), default: 0] >= configuration.maxConnectionsPerAddress {
                refuse(wsi, .perAddress, status: 429, reason: "Too Many Requests",
                       body: "too many connections from this address\n")
                return 1
            }
            return 0

        case LWS_CALLBACK_ESTABLISHED:
            guard let user else { return -1 }
            nextConnectionID += 1
            let connection = Connection(id: nextConnectionID, wsi: wsi, peerAddress: peerAddress(wsi),
                                        requestBucket: rateLimiter.connectionBucket())
            user.storeBytes(of: connection.id, as: UInt64.self)
            connections[connection.id] = connection
            connectionIDs[wsi] = connection.id
            addressConnections[connection.peerAddress, default: 0] += 1
            metrics.connectionOpened()
            if log.enabled(.debug) {
                log.debug("connection.opened", "WebSocket connection opened",
                          ["conn": .int(Int(connection.id)), "addr": .string(connection.peerAddress)])
            }
            startAuthDeadline(connection)
            return 0

        case LWS_CALLBACK_TIMER:
            // One timer per connection: before authentication it is the authentication
            // deadline; after, it fires when the session expires (sessions do not slide).
            // The deadlines live on the connection, so a timer that fires late, early or
            // after a cancel (lws 4.1 runs a "cancelled" timer at once) does the right thing.
            guard let connection = connection(for: wsi), connection.pendingClose == nil else { return 0 }
            let now = Self.nowMillis()
            if !connection.isAuthenticated, let deadline = connection.authDeadline {
                if now >= deadline {
                    metrics.rejected(.authTimeout)
                    close(connection, code: 1008, reason: "authenticate within \(configuration.authTimeoutSeconds) s")
                } else {
                    arm(connection, at: deadline)
                }
            } else if connection.isAuthenticated, let expiry = connection.sessionExpiresAt {
                if now >= expiry {
                    close(connection, code: CloseCode.sessionEnded, reason: "session expired")
                } else {
                    arm(connection, at: expiry)
                }
            }
            return 0

        case LWS_CALLBACK_RECEIVE:
            guard let connection = connection(for: wsi) else { return -1 }
            return receive(connection, input: input, length: length)

        case LWS_CALLBACK_SERVER_WRITEABLE:
            guard let connection = connection(for: wsi) else { return -1 }
            return writable(connection)

        case LWS_CALLBACK_CLOSED:
            if let connection = connection(for: wsi) { forget(connection) }
            return 0

        case LWS_CALLBACK_HTTP:
            return answerHTTP(wsi, path: input.map { String(cString: $0.assumingMemoryBound(to: CChar.self)) } ?? "")

        case LWS_CALLBACK_HTTP_WRITEABLE:
            guard let body = pendingHTTP.removeValue(forKey: wsi) else { return 0 }
            let buffer = FrameBuffer(body)
            if lws_write(wsi, buffer.payload, buffer.count, LWS_WRITE_HTTP_FINAL) != Int32(buffer.count) { return -1 }
            return lws_http_transaction_completed(wsi) != 0 ? -1 : 0

        case LWS_CALLBACK_CLOSED_HTTP:
            pendingHTTP.removeValue(forKey: wsi)
            return 0

        default:
            return 0
        }
    }

    func connection(for wsi: OpaquePointer) -> Connection? {
        connectionIDs[wsi].flatMap { connections[$0] }
    }

    // MARK: Receiving

    private func receive(_ connection: Connection, input: UnsafeMutableRawPointer?, length: Int) -> Int32 {
        if lws_is_first_fragment(connection.wsi) != 0 { connection.inbound.removeAll(keepingCapacity: true) }
        if let input, length > 0 {
            connection.inbound.append(contentsOf: UnsafeRawBufferPointer(start: input, count: length))
        }
        if connection.inbound.count > configuration.maxFrameBytes {
            close(connection, code: 1009, reason: "message too big", now: true)
            return -1
        }
        guard lws_is_final_fragment(connection.wsi) != 0, lws_remaining_packet_payload(connection.wsi) == 0 else {
            return 0
        }
        let binary = lws_frame_is_binary(connection.wsi) != 0
        let message = connection.inbound
        connection.inbound.removeAll(keepingCapacity: connection.inbound.capacity <= 65_536)
        if binary {
            metrics.frameIn("binary")
            send(RequestRejection.binaryFrame.errorFrame, to: connection)
        } else {
            handleFrame(message, from: connection)
        }
        return 0
    }

    // MARK: Writing

    private func writable(_ connection: Connection) -> Int32 {
        if let close = connection.pendingClose {
            var reason = Array(close.reason.utf8)
            lws_close_reason(connection.wsi, lws_close_status(rawValue: UInt32(close.code)), &reason, reason.count)
            Self.discardUnread(connection.wsi)
            return -1
        }
        // Everything queued, up to the budget, in one write: one frame as it is, several
        // framed here and coalesced into one send() — under fan-out the kernel's cost per
        // send, not the bytes, is what a delivery costs. lws buffers the rest of a partial
        // write itself; the budget keeps one busy connection from starving the others.
        let frames = connection.dequeue(upTo: Self.writeBudgetBytes)
        if frames.count == 1 {
            let frame = frames[0]
            if lws_write(connection.wsi, frame.payload, frame.count, LWS_WRITE_TEXT) < Int32(frame.count) { return -1 }
        } else if !frames.isEmpty {
            let batch = Self.coalesce(frames)
            let length = batch.count - FrameBuffer.headroom
            if lws_write(connection.wsi, batch.payload, length, LWS_WRITE_HTTP) < Int32(length) { return -1 }
        }
        requestReplayPages(for: connection)
        if connection.hasQueuedFrames { lws_callback_on_writable(connection.wsi) }
        return 0
    }

    /// lws sends the close frame and closes the socket at once, without waiting for the
    /// peer's close. A socket closed with unread bytes in it (requests the client sent
    /// meanwhile) is reset by the kernel, and the peer may lose the close frame with the
    /// reset (it sees 1006, not our code). So what has arrived is read and dropped first:
    /// those requests were never answered, and a client retries them (same client_msg_id).
    static func discardUnread(_ wsi: OpaquePointer) {
        let socket = lws_get_socket_fd(wsi)
        guard socket >= 0 else { return }
        var scratch = [UInt8](repeating: 0, count: 16_384)
        while scratch.withUnsafeMutableBytes({ recv(socket, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT)) }) > 0 {}
    }

    /// Server→client WebSocket frames (FIN, text, unmasked) back to back in one buffer,
    /// written raw (`LWS_WRITE_RAW`, which lws sends as it is on a WebSocket connection).
    static func coalesce(_ frames: [FrameBuffer]) -> RawBatch {
        let total = frames.reduce(0) { $0 + 10 + $1.count }
        let batch = RawBatch(capacity: FrameBuffer.headroom + total)
        for frame in frames {
            batch.append(0x81)
            if frame.count < 126 {
                batch.append(UInt8(frame.count))
            } else if frame.count <= 0xFFFF {
                batch.append(126)
                batch.append(UInt8(frame.count >> 8))
                batch.append(UInt8(frame.count & 0xFF))
            } else {
                batch.append(127)
                for shift in stride(from: 56, through: 0, by: -8) { batch.append(UInt8((frame.count >> shift) & 0xFF)) }
            }
            batch.append(frame.payload, count: frame.count)
        }
        return batch
    }

    /// Bytes one writable callback may write to one connection.
    static let writeBudgetBytes = 256 * 1024

    /// Queues a frame and asks lws for a writable callback.
    func enqueue(_ frame: FrameBuffer, to connection: Connection, live: Bool) {
        guard connection.pendingClose == nil else { return }
        connection.enqueue(frame, live: live)
        if live && connection.queuedLiveBytes > configuration.outgoingQueueBytes {
            closeSlowConsumer(connection)
            return
        }
        lws_callback_on_writable(connection.wsi)
    }

    /// 4008: the connection's live backlog passed the bound; it resumes with `after`.
    func closeSlowConsumer(_ connection: Connection) {
        metrics.slowConsumerClosed()
        close(connection, code: 4008, reason: CloseCode.slowConsumerReason)
    }

    func send(_ error: ErrorFrame, to connection: Connection) {
        metrics.error(error.code)
        metrics.frameOut("error")
        enqueue(FrameBuffer(error.encode()), to: connection, live: false)
    }

    func send(_ result: ResultFrame, to connection: Connection) {
        metrics.frameOut(result.response.type.rawValue)
        enqueue(FrameBuffer(result.encode()), to: connection, live: false)
    }

    /// Closes a connection with a WebSocket close code: queued frames are dropped. With
    /// `now`, the caller returns -1 from the current callback itself.
    func close(_ connection: Connection, code: UInt16, reason: String, now: Bool = false) {
        // Policy closes are news (a slow consumer most of all); shutdown's 1001s are not.
        if code != 1001 {
            log.throttled(code == 4008 ? .warn : .info, "connection.closed_by_relay", "the relay closed a connection",
                          ["conn": .int(Int(connection.id)), "addr": .string(connection.peerAddress),
                           "user_id": .string(connection.userID?.string ?? ""), "code": .int(Int(code)),
                           "reason": .string(reason), "queued_bytes": .int(connection.queuedBytes)])
        }
        connection.dropQueue()
        for channel in Array(connection.subscriptions.keys) { connection.subscriptions[channel]?.dropHeld() }
        connection.pendingClose = (code, reason)
        if now {
            var bytes = Array(reason.utf8)
            lws_close_reason(connection.wsi, lws_close_status(rawValue: UInt32(code)), &bytes, bytes.count)
        } else {
            lws_callback_on_writable(connection.wsi)
        }
    }

    func closeAllForShutdown() {
        for connection in connections.values where connection.pendingClose == nil {
            close(connection, code: 1001, reason: "server shutting down")
        }
    }

    /// Removes every trace of a closed connection.
    func forget(_ connection: Connection) {
        for channel in connection.subscriptions.keys { removeSubscriber(connection.id, channel: channel) }
        if let user = connection.userID { userConnections[user]?.remove(connection.id) }
        if let session = connection.sessionHash { sessionConnections[session]?.remove(connection.id) }
        connections.removeValue(forKey: connection.id)
        connectionIDs.removeValue(forKey: connection.wsi)
        if let count = addressConnections[connection.peerAddress] {
            if count <= 1 {
                addressConnections.removeValue(forKey: connection.peerAddress)
            } else {
                addressConnections[connection.peerAddress] = count - 1
            }
        }
        pendingSubscribes.removeValue(forKey: connection.id)
        metrics.connectionClosed()
        if log.enabled(.debug) {
            log.debug("connection.closed", "WebSocket connection closed",
                      ["conn": .int(Int(connection.id)), "addr": .string(connection.peerAddress),
                       "user_id": .string(connection.userID?.string ?? ""),
                       "open_ms": .int(Self.nowMillis() - connection.openedAt)])
        }
    }

    // MARK: HTTP

    private func answerHTTP(_ wsi: OpaquePointer, path: String) -> Int32 {
        switch path {
        case "/healthz":
            // A balancer stops sending new clients as soon as the relay starts to stop.
            if draining { return respond(wsi, status: 503, body: "draining\n", type: "text/plain") }
            let up = health.isDatabaseUp
            return respond(wsi, status: up ? 200 : 503, body: up ? "ok\n" : "unavailable\n", type: "text/plain")
        case "/metrics":
            let queues = Metrics.Queues(outgoingBytes: connections.values.reduce(0) { $0 + $1.queuedBytes },
                                        databaseJobs: workers.queuedJobs)
            return respond(wsi, status: 200, body: metrics.render(databaseUp: health.isDatabaseUp, queues: queues),
                           type: "text/plain; version=0.0.4")
        case ProtocolConstants.path:
            return respond(wsi, status: 426, body: "upgrade to a WebSocket with subprotocol parley.v1\n", type: "text/plain")
        default:
            // The web client (`web/`), with the page's security headers; GET only.
            if let file = webFiles.file(for: path) {
                guard lws_hdr_total_length(wsi, WSI_TOKEN_GET_URI) > 0 else {
                    return respond(wsi, status: 405, body: Array("use GET\n".utf8), type: "text/plain",
                                   headers: [("allow", "GET")])
                }
                return respond(wsi, status: 200, body: file.body, type: file.contentType, headers: WebFiles.securityHeaders)
            }
            return respond(wsi, status: 404, body: "not found\n", type: "text/plain")
        }
    }

    /// Whether a handshake's `Origin` is the relay's own page: the origin the client
    /// addressed (its `Host`), so the web client works under `--allowed-origins` too.
    private func isOwnPage(_ origin: String, _ wsi: OpaquePointer) -> Bool {
        guard !webFiles.isEmpty, let host = header(wsi, WSI_TOKEN_HOST), !host.isEmpty else { return false }
        return origin == "https://\(host)" || origin == "http://\(host)"
    }

    /// Answers a refused WebSocket upgrade with a complete HTTP/1.1 response, written at
    /// once because the connection is closed right after. (lws's own status helpers answer
    /// an upgrade request as HTTP/1.0, which WebSocket clients refuse to read.)
    /// Refuses a handshake past a hardening check: counted, logged (throttled), answered.
    private func refuse(_ wsi: OpaquePointer, _ rejection: Metrics.Rejection, status: Int, reason: String,
                        body: String, origin: String? = nil) {
        metrics.rejected(rejection)
        log.throttled(.warn, "connection.refused", "a WebSocket handshake was refused",
                      ["reason": .string(rejection.rawValue), "addr": .string(peerAddress(wsi)), "status": .int(status),
                       "origin": .string(origin ?? "")])
        refuseUpgrade(wsi, status: status, reason: reason, body: body)
    }

    private func refuseUpgrade(_ wsi: OpaquePointer, status: Int, reason: String, body: String) {
        let response = "HTTP/1.1 \(status) \(reason)\r\ncontent-type: text/plain\r\n"
            + "content-length: \(body.utf8.count)\r\nconnection: close\r\n\r\n" + body
        let frame = FrameBuffer(Array(response.utf8))
        _ = lws_write(wsi, frame.payload, frame.count, LWS_WRITE_HTTP_HEADERS)
    }

    private func respond(_ wsi: OpaquePointer, status: UInt32, body: String, type: String) -> Int32 {
        respond(wsi, status: status, body: Array(body.utf8), type: type)
    }

    private func respond(_ wsi: OpaquePointer, status: UInt32, body: [UInt8], type: String,
                         headers extra: [(String, String)] = []) -> Int32 {
        var headers = [UInt8](repeating: 0, count: FrameBuffer.headroom + 4096)
        return headers.withUnsafeMutableBufferPointer { buffer -> Int32 in
            guard let base = buffer.baseAddress else { return -1 }
            let start = base + FrameBuffer.headroom
            var cursor: UnsafeMutablePointer<UInt8>? = start
            let end = base + buffer.count - 1
            if lws_add_http_common_headers(wsi, status, type, lws_filepos_t(body.count), &cursor, end) != 0 {
                return 1
            }
            // Every answer, page or not: no client guesses another type from the bytes.
            let headers = extra.contains { $0.0 == "x-content-type-options" } ? extra
                : extra + [("x-content-type-options", "nosniff")]
            for (name, value) in headers {
                let added = (name + ":").withCString { namePointer in
                    value.withCString { valuePointer in
                        lws_add_http_header_by_name(
                            wsi, UnsafeRawPointer(namePointer).assumingMemoryBound(to: UInt8.self),
                            UnsafeRawPointer(valuePointer).assumingMemoryBound(to: UInt8.self),
                            Int32(value.utf8.count), &cursor, end)
                    }
                }
                if added != 0 { return 1 }
            }
            if lws_finalize_write_http_header(wsi, start, &cursor, end) != 0 { return 1 }
            pendingHTTP[wsi] = body
            lws_callback_on_writable(wsi)
            return 0
        }
    }

    // MARK: Helpers

    /// Starts the authentication deadline (a new or a logged-out connection), if configured.
    func startAuthDeadline(_ connection: Connection) {
        connection.authDeadline = nil
        guard configuration.authTimeoutSeconds > 0 else { return }
        let deadline = Self.nowMillis() + configuration.authTimeoutSeconds * 1000
        connection.authDeadline = deadline
        arm(connection, at: deadline)
    }

    /// Wakes the connection's timer at `deadline` (unix ms).
    func arm(_ connection: Connection, at deadline: Int) {
        let remaining = max(0, deadline - Self.nowMillis())
        lws_set_timer_usecs(connection.wsi, lws_usec_t(remaining) * 1000)
    }

    static func nowMillis() -> Int { Int(Date().timeIntervalSince1970 * 1000) }

    /// A request header's value, or nil when absent.
    private func header(_ wsi: OpaquePointer, _ token: lws_token_indexes) -> String? {
        let length = lws_hdr_total_length(wsi, token)
        guard length > 0 else { return nil }
        var buffer = [CChar](repeating: 0, count: Int(length) + 1)
        guard lws_hdr_copy(wsi, &buffer, Int32(buffer.count), token) >= 0 else { return nil }
        return String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    private func isParleyProtocol(_ wsi: OpaquePointer) -> Bool {
        guard let proto = lws_get_protocol(wsi), let name = proto.pointee.name else { return false }
        return String(cString: name) == ProtocolConstants.subprotocol
    }

    private func requestPath(_ wsi: OpaquePointer) -> String {
        header(wsi, WSI_TOKEN_GET_URI) ?? ""
    }

    private func peerAddress(_ wsi: OpaquePointer) -> String {
        var buffer = [CChar](repeating: 0, count: 128)
        guard lws_get_peer_simple(wsi, &buffer, buffer.count) != nil else { return "" }
        return String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}
