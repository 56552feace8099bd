import Foundation
import ParleyStore

/// A few threads, each owning one `PostgresConnection`, that run jobs in FIFO order.
///
/// Jobs are routed by a key: every change to one channel goes to the same worker, so a
/// channel's commits reach the service thread in commit (and so seq) order. A worker
/// whose connection is down hands its job a nil connection, and the job answers
/// `unavailable`; the next job tries to connect again.
final class DatabaseWorkers: @unchecked Sendable {
    typealias Job = @Sendable (PostgresConnection?) -> Void

    private final class Worker: @unchecked Sendable {
        let condition = NSCondition()
        var jobs: [Job] = []          // guarded by condition
        var stopping = false          // guarded by condition
        var thread: Thread?
    }

    private let workers: [Worker]
    private let connectionString: String
    private let metrics: Metrics
    private let log: Log

    init(count: Int, connectionString: String, metrics: Metrics, log: Log) {
        self.connectionString = connectionString
        self.metrics = metrics
        self.log = log
        workers = (0..<max(1, count)).map { _ in Worker() }
    }

    func start() {
        for (index, worker) in workers.enumerated() {
            let thread = Thread { [connectionString, metrics, log] in
                Self.run(worker, index: index, connectionString: connectionString, metrics: metrics, log: log)
            }
            thread.name = "parley-db-\(index)"
            worker.thread = thread
            thread.start()
        }
    }

    /// Queues a job on the worker chosen by `key` (same key, same worker, same order).
    func submit<Key: Hashable>(key: Key, _ job: @escaping Job) {
        var hasher = Hasher()
        hasher.combine(key)
        let worker = workers[Int(UInt(bitPattern: hasher.finalize()) % UInt(workers.count))]
        worker.condition.lock()
        worker.jobs.append(job)
        worker.condition.signal()
        worker.condition.unlock()
    }

    /// Lets each worker finish its queue, then stops it; returns when all have stopped.
    func stop() {
        for worker in workers {
            worker.condition.lock()
            worker.stopping = true
            worker.condition.broadcast()
            worker.condition.unlock()
        }
        for worker in workers {
            while let thread = worker.thread, !thread.isFinished { usleep(1000) }
        }
    }

    /// Jobs waiting in every worker's queue (for /metrics).
    var queuedJobs: Int {
        workers.reduce(0) { total, worker in
            worker.condition.lock()
            defer { worker.condition.unlock() }
            return total + worker.jobs.count
        }
    }

    private static func run(_ worker: Worker, index: Int, connectionString: String, metrics: Metrics, log: Log) {
        var connection: PostgresConnection?
        var everConnected = false
        // While the connection is down: since when, and how many attempts failed.
        var outage: (since: Date, failures: Int)?
        while true {
            worker.condition.lock()
            while worker.jobs.isEmpty && !worker.stopping { worker.condition.wait() }
            if worker.jobs.isEmpty && worker.stopping {
                worker.condition.unlock()
                return
            }
            let job = worker.jobs.removeFirst()
            worker.condition.unlock()

            if connection == nil || connection?.isConnected == false {
                if everConnected && outage == nil {
                    outage = (Date(), 0)
                    log.warn("database.disconnected", "a database worker lost its connection", ["worker": .int(index)])
                }
                connection = try? PostgresConnection(connectionString: connectionString, applicationName: "parley-relay")
                // Every attempt after the first connection is a reconnect, failed or not.
                if everConnected { metrics.databaseReconnect(succeeded: connection != nil) }
                if connection != nil {
                    everConnected = true
                    if let down = outage {
                        log.info("database.reconnected", "a database worker has its connection back",
                                 ["worker": .int(index), "failed_attempts": .int(down.failures),
                                  "down_ms": .int(Int(Date().timeIntervalSince(down.since) * 1000))])
                        outage = nil
                    }
                } else if outage != nil {
                    outage!.failures += 1
                }
            }
            job(connection)
        }
    }
}
