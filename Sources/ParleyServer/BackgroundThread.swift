import Foundation

/// A named thread that runs a loop until `stop()`: the loop polls `isStopping` between
/// steps (the health check, the LISTEN connection). Thread-safe.
final class BackgroundThread: @unchecked Sendable {
    let name: String
    private let lock = NSLock()
    private var stopping = false        // guarded by lock
    private var thread: Thread?         // guarded by lock

    init(name: String) {
        self.name = name
    }

    var isStopping: Bool { lock.withLock { stopping } }

    func start(_ body: @escaping @Sendable () -> Void) {
        let thread = Thread(block: body)
        thread.name = name
        lock.withLock { self.thread = thread }
        thread.start()
    }

    /// Asks the loop to end and waits until it has.
    func stop() {
        let thread: Thread? = lock.withLock {
            stopping = true
            return self.thread
        }
        while let thread, !thread.isFinished { usleep(2000) }
    }
}
