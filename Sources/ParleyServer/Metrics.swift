import Foundation
import ParleyProtocol

/// Counters for `/metrics` (Prometheus text format). Thread-safe: everything is guarded
/// by `lock`; the service thread and the workers both count.
final class Metrics: @unchecked Sendable {
    private let lock = NSLock()
    private var connections = 0                       // guarded by lock
    private var framesIn: [String: Int] = [:]          // guarded by lock
    private var framesOut: [String: Int] = [:]         // guarded by lock
    private var errors: [String: Int] = [:]            // guarded by lock
    private var messagesStored = 0                     // guarded by lock
    private var deliveries = 0                         // guarded by lock
    private var slowConsumerCloses = 0                 // guarded by lock
    private var databaseSeconds = 0.0                  // guarded by lock
    private var databaseCalls = 0                      // guarded by lock
    private var databaseReconnects: [String: Int] = [:]  // guarded by lock
    private var rejections: [String: Int] = [:]        // guarded by lock
    private var sendBatches = 0                        // guarded by lock
    private var sendsBatched = 0                       // guarded by lock
    private var listenConnected = false                // guarded by lock
    private var listenReconnects = 0                   // guarded by lock
    private var announcements = 0                      // guarded by lock
    private var crossNodeMessages = 0                  // guarded by lock
    private var gapReads = 0                           // guarded by lock

    /// Why a connection or request was refused (`parley_rejections_total{reason}`).
    enum Rejection: String, CaseIterable {
        case maxConnections = "max_connections"
        case perAddress = "per_address"
        case origin
        case authTimeout = "auth_timeout"
        case rateLimited = "rate_limited"
        case slowConsumer = "slow_consumer"
    }

    func connectionOpened() { lock.withLock { connections += 1 } }
    func connectionClosed() { lock.withLock { connections -= 1 } }
    func frameIn(_ type: String) { lock.withLock { framesIn[type, default: 0] += 1 } }
    func frameOut(_ type: String, count: Int = 1) { lock.withLock { framesOut[type, default: 0] += count } }
    func error(_ code: ErrorCode) { lock.withLock { errors[code.rawValue, default: 0] += 1 } }
    func messageStored() { lock.withLock { messagesStored += 1 } }
    func delivered(_ count: Int) { lock.withLock { deliveries += count } }
    func slowConsumerClosed() {
        lock.withLock {
            slowConsumerCloses += 1
            rejections[Rejection.slowConsumer.rawValue, default: 0] += 1
        }
    }
    func rejected(_ reason: Rejection) { lock.withLock { rejections[reason.rawValue, default: 0] += 1 } }
    /// A worker replaced a broken database connection (or failed to).
    func databaseReconnect(succeeded: Bool) {
        lock.withLock { databaseReconnects[succeeded ? "ok" : "failed", default: 0] += 1 }
    }

    /// One group commit of `size` message sends.
    func sendBatch(size: Int) {
        lock.withLock {
            sendBatches += 1
            sendsBatched += size
        }
    }

    /// The LISTEN connection came up (after its catch-up) or was lost.
    func listening(_ up: Bool) { lock.withLock { listenConnected = up } }
    func listenReconnected() { lock.withLock { listenReconnects += 1 } }
    /// Another node's announcement arrived.
    func announcementReceived() { lock.withLock { announcements += 1 } }
    /// A message committed by another node went out to this node's subscribers.
    func crossNodeMessage() { lock.withLock { crossNodeMessages += 1 } }
    /// A feed's gap was read from the tables.
    func gapRead() { lock.withLock { gapReads += 1 } }

    func databaseCall(seconds: Double) {
        lock.withLock {
            databaseSeconds += seconds
            databaseCalls += 1
        }
    }

    /// The exposition text.
    /// Gauges sampled when /metrics is read: bytes queued for all connections, jobs
    /// waiting for a database worker.
    struct Queues {
        var outgoingBytes: Int
        var databaseJobs: Int
    }

    func render(databaseUp: Bool, queues: Queues) -> String {
        lock.withLock {
            var text = ""
            func family(_ name: String, _ type: String, _ help: String) {
                text += "# HELP \(name) \(help)\n# TYPE \(name) \(type)\n"
            }
            family("parley_connections", "gauge", "Open WebSocket connections.")
            text += "parley_connections \(connections)\n"
            family("parley_frames_in_total", "counter", "Client frames received, by request type.")
            for (type, count) in framesIn.sorted(by: { $0.key < $1.key }) {
                text += "parley_frames_in_total{type=\"\(type)\"} \(count)\n"
            }
            family("parley_frames_out_total", "counter", "Frames sent, by type.")
            for (type, count) in framesOut.sorted(by: { $0.key < $1.key }) {
                text += "parley_frames_out_total{type=\"\(type)\"} \(count)\n"
            }
            family("parley_errors_total", "counter", "Error frames sent, by code.")
            for (code, count) in errors.sorted(by: { $0.key < $1.key }) {
                text += "parley_errors_total{code=\"\(code)\"} \(count)\n"
            }
            family("parley_messages_stored_total", "counter", "Messages committed.")
            text += "parley_messages_stored_total \(messagesStored)\n"
            family("parley_deliveries_total", "counter", "event.message frames queued to subscribers.")
            text += "parley_deliveries_total \(deliveries)\n"
            family("parley_slow_consumer_closes_total", "counter", "Connections closed with 4008.")
            text += "parley_slow_consumer_closes_total \(slowConsumerCloses)\n"
            family("parley_rejections_total", "counter", "Connections and requests refused, by reason.")
            for reason in Rejection.allCases {
                text += "parley_rejections_total{reason=\"\(reason.rawValue)\"} \(rejections[reason.rawValue, default: 0])\n"
            }
            family("parley_database_seconds", "summary", "Time spent in database jobs.")
            text += "parley_database_seconds_sum \(databaseSeconds)\nparley_database_seconds_count \(databaseCalls)\n"
            family("parley_message_batches_total", "counter", "Group commits of message sends.")
            text += "parley_message_batches_total \(sendBatches)\n"
            family("parley_message_batch_sends_total", "counter", "Message sends stored through group commits.")
            text += "parley_message_batch_sends_total \(sendsBatched)\n"
            family("parley_database_reconnects_total", "counter", "Worker database reconnections, by result.")
            for result in ["failed", "ok"] {
                text += "parley_database_reconnects_total{result=\"\(result)\"} \(databaseReconnects[result, default: 0])\n"
            }
            family("parley_listen_connected", "gauge", "1 while the LISTEN connection for other nodes' commits is up.")
            text += "parley_listen_connected \(listenConnected ? 1 : 0)\n"
            family("parley_listen_reconnects_total", "counter", "Times the LISTEN connection was made again after a loss.")
            text += "parley_listen_reconnects_total \(listenReconnects)\n"
            family("parley_announcements_total", "counter", "Other nodes' commit announcements received.")
            text += "parley_announcements_total \(announcements)\n"
            family("parley_cross_node_messages_total", "counter",
                   "Messages committed by other nodes and fanned out here.")
            text += "parley_cross_node_messages_total \(crossNodeMessages)\n"
            family("parley_feed_gap_reads_total", "counter", "Reads of messages no announcement brought in time.")
            text += "parley_feed_gap_reads_total \(gapReads)\n"
            family("parley_outgoing_queue_bytes", "gauge", "Bytes queued for all connections.")
            text += "parley_outgoing_queue_bytes \(queues.outgoingBytes)\n"
            family("parley_database_queue_jobs", "gauge", "Jobs waiting for a database worker.")
            text += "parley_database_queue_jobs \(queues.databaseJobs)\n"
            family("parley_database_up", "gauge", "1 when the last health check reached PostgreSQL.")
            text += "parley_database_up \(databaseUp ? 1 : 0)\n"
            return text
        }
    }
}
