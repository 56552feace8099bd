import Dispatch
import Foundation

/// A value shared between test threads, guarded by its own lock.
public final class Locked<Value>: @unchecked Sendable {
    private let lock = NSLock()
    private var value: Value   // guarded by lock

    public init(_ value: Value) { self.value = value }

    public func withLock<T>(_ body: (inout Value) throws -> T) rethrows -> T {
        lock.lock()
        defer { lock.unlock() }
        return try body(&value)
    }

    public var current: Value { withLock { $0 } }
}

/// A thread of `onThreads` that did not finish in time.
public struct ThreadDidNotFinish: Error, CustomStringConvertible {
    public var description: String { "thread did not finish" }
}

/// Runs `body` on `count` new threads released together, waits for all of them (up to
/// `timeout` seconds, a guard against a hang, not a measurement) and returns each
/// thread's outcome in thread order; a thread still running then gives `ThreadDidNotFinish`.
public func onThreads<T: Sendable>(
    _ count: Int,
    timeout: TimeInterval = 300,
    _ body: @escaping @Sendable (Int) throws -> T
) -> [Result<T, any Error>] {
    let results = Locked<[Result<T, any Error>?]>(Array(repeating: nil, count: count))
    let gate = DispatchSemaphore(value: 0)
    let group = DispatchGroup()
    for index in 0..<count {
        group.enter()
        let thread = Thread {
            gate.wait()
            let outcome = Result { try body(index) }
            results.withLock { $0[index] = outcome }
            group.leave()
        }
        thread.name = "test-thread-\(index)"
        thread.start()
    }
    for _ in 0..<count { gate.signal() }
    _ = group.wait(timeout: .now() + timeout)
    return results.current.map { $0 ?? .failure(ThreadDidNotFinish()) }
}
