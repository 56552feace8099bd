import Foundation
import ParleyStore

/// A few threads, each owning one `PostgresConnection`, that run jobs in FIFO order.
///
/// Jobs are routed by a key: every change to one channel goes to the same worker, so a
/// channel's commits reach the service thread in commit (and so seq) order. A worker
/// whose connection is down hands its job a nil connection, and the job answers
/// `unavailable`; the next job tries to connect again.
///
/// Group commit: message sends that wait one after another at the head of a worker's
/// queue are handed to `storeSends` together (at most `maxBatch`, about `maxBatchBytes` of
/// ciphertext), which stores them in one transaction. The busier the relay, the bigger the
/// batches; an idle relay stores a lone send at once — no timer, no added latency. Taking
/// only consecutive sends keeps every channel's jobs in their order.
final class DatabaseWorkers: @unchecked Sendable {
    typealias Job = @Sendable (PostgresConnection?) -> Void
    /// Stores sends (in order) on the worker's connection, or answers them when it is nil.
    typealias SendBatch = @Sendable ([MessageSend], PostgresConnection?) -> Void

    static let maxBatch = 256
    static let maxBatchBytes = 4 << 20

    private enum Work {
        case job(Job)
        case send(MessageSend)
    }

    private final class Worker: @unchecked Sendable {
        let condition = NSCondition()
        var queue: [Work] = []        // guarded by condition; live items start at `head`
        var head = 0                  // guarded by condition
        var stopping = false          // guarded by condition
        var thread: Thread?

        var count: Int { queue.count - head }

        /// The next item and, when it is a send, the sends right behind it (condition held).
        func take() -> Work? {
            guard head < queue.count else { return nil }
            let first = queue[head]
            head += 1
            if head > 1024 && head * 2 > queue.count {
                queue.removeFirst(head)
                head = 0
            }
            return first
        }

        func takeSends(after first: MessageSend) -> [MessageSend] {
            var batch = [first]
            var bytes = first.request.ciphertext.count
            while batch.count < DatabaseWorkers.maxBatch, bytes < DatabaseWorkers.maxBatchBytes,
                  head < queue.count, case .send(let next) = queue[head] {
                batch.append(next)
                bytes += next.request.ciphertext.count
                _ = take()
            }
            return batch
        }
    }

    private let workers: [Worker]
    private let connectionString: String
    private let metrics: Metrics
    private let log: Log
    private let storeSends: SendBatch

    init(count: Int, connectionString: String, metrics: Metrics, log: Log, storeSends: @escaping SendBatch) {
        self.connectionString = connectionString
        self.metrics = metrics
        self.log = log
        self.storeSends = storeSends
        workers = (0..<max(1, count)).map { _ in Worker() }
    }

    func start() {
        for (index, worker) in workers.enumerated() {
            let thread = Thread { [self] in run(worker, index: index) }
            thread.name = "parley-db-\(index)"
            worker.thread = thread
            thread.start()
        }
    }

    /// Queues a job on the worker chosen by `key` (same key, same worker, same order).
    func submit<Key: Hashable>(key: Key, _ job: @escaping Job) {
        enqueue(.job(job), key: key)
    }

    /// Queues a message send on its channel's worker, to be stored with its neighbours.
    func submit(_ send: MessageSend) {
        enqueue(.send(send), key: send.request.channelID)
    }

    private func enqueue<Key: Hashable>(_ work: Work, key: Key) {
        var hasher = Hasher()
        hasher.combine(key)
        let worker = workers[Int(UInt(bitPattern: hasher.finalize()) % UInt(workers.count))]
        worker.condition.lock()
        worker.queue.append(work)
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
            return total + worker.count
        }
    }

    private func run(_ worker: Worker, index: Int) {
        var connection: PostgresConnection?
        var everConnected = false
        // While the connection is down: since when, and how many attempts failed.
        var outage: (since: Date, failures: Int)?
        while true {
            worker.condition.lock()
            while worker.count == 0 && !worker.stopping { worker.condition.wait() }
            guard let work = worker.take() else {
                worker.condition.unlock()
                return
            }
            var sends: [MessageSend] = []
            if case .send(let first) = work { sends = worker.takeSends(after: first) }
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
            switch work {
            case .job(let job):
                job(connection)
            case .send:
                metrics.sendBatch(size: sends.count)
                storeSends(sends, connection)
            }
        }
    }
}
