import Foundation
import ParleyStore
import ParleyTestSupport
import XCTest

/// `ConnectionPool`: bounded, shared safely by threads, closable, and a failed connect
/// gives its slot back.
final class ConnectionPoolTests: XCTestCase {
    private static let database = Result { try TestDatabase.makeDatabase() }

    private func backends(named applicationName: String, on connection: PostgresConnection) throws -> Int {
        try XCTUnwrap(connection.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1", [.text(applicationName)]
        ).first).int(0)
    }

    func testEightThreadsShareAtMostThreeConnections() throws {
        let name = "pool-\(Fixture.hex().prefix(12))"
        let pool = ConnectionPool(connectionString: try Self.database.get(), maximumConnections: 3, applicationName: name)
        let monitor = try PostgresConnection(connectionString: Self.database.get(), applicationName: "monitor-\(name)")

        let pids = Locked<Set<Int64>>([])
        let finished = Locked(false)
        let samples = Locked<[Int]>([])
        let monitorDone = DispatchSemaphore(value: 0)
        let monitorString = try Self.database.get()
        let monitorThread = Thread {
            defer { monitorDone.signal() }
            guard let watcher = try? PostgresConnection(connectionString: monitorString, applicationName: "watch-\(name)") else {
                samples.withLock { $0.append(-1) }
                return
            }
            while !finished.current {
                let count = (try? watcher.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1", [.text(name)]
                ).first?.int(0)) ?? -1
                samples.withLock { $0.append(count) }
            }
        }
        monitorThread.start()

        let outcomes = onThreads(8) { thread -> Int in
            var done = 0
            for index in 0..<50 {
                let value = thread * 1000 + index
                let (pid, doubled) = try pool.withConnection { connection -> (Int64, Int) in
                    let row = try XCTUnwrap(connection.execute(
                        "SELECT pg_backend_pid(), $1::int * 2", [.int(value)]
                    ).first)
                    return (try row.int64(0), try row.int(1))
                }
                guard doubled == value * 2 else {
                    throw StoreError(.decodingFailed, detail: "thread \(thread) got \(doubled) for \(value)")
                }
                pids.withLock { _ = $0.insert(pid) }
                done += 1
            }
            return done
        }
        finished.withLock { $0 = true }
        XCTAssertEqual(monitorDone.wait(timeout: .now() + 60), .success)

        for (thread, outcome) in outcomes.enumerated() {
            XCTAssertEqual(try outcome.get(), 50, "thread \(thread)")
        }
        let seen = samples.current
        XCTAssertFalse(seen.isEmpty)
        XCTAssertFalse(seen.contains(-1), "the monitor's query failed")
        XCTAssertLessThanOrEqual(seen.max() ?? 0, 3, "pg_stat_activity samples: \(seen.count), max \(seen.max() ?? 0)")
        XCTAssertLessThanOrEqual(pids.current.count, 3, "queries ran on \(pids.current.count) backends")
        XCTAssertGreaterThanOrEqual(pids.current.count, 1)

        // Afterwards the pool keeps its connections open, never more than three.
        let open = try backends(named: name, on: monitor)
        XCTAssertGreaterThanOrEqual(open, 1)
        XCTAssertLessThanOrEqual(open, 3)

        // close() drops the idle connections: their backends go away (waited for, up to 20 s).
        pool.close()
        var remaining = open
        for _ in 0..<200 where remaining > 0 {
            usleep(100_000)
            remaining = try backends(named: name, on: monitor)
        }
        XCTAssertEqual(remaining, 0, "backends still open after close()")
    }

    func testClosedPoolThrowsPoolClosed() throws {
        let pool = ConnectionPool(connectionString: try Self.database.get(), maximumConnections: 2)
        XCTAssertEqual(try pool.withConnection { try $0.execute("SELECT 7").first?.int(0) }, 7)
        pool.close()
        let error = try XCTUnwrap(storeError { try pool.withConnection { _ in 1 } })
        XCTAssertEqual(error.code, .poolClosed)
        XCTAssertEqual(storeError { try pool.withConnection { _ in 1 } }?.code, .poolClosed)
    }

    func testWaiterIsReleasedWithPoolClosedWhenThePoolCloses() throws {
        let pool = ConnectionPool(connectionString: try Self.database.get(), maximumConnections: 1)
        let holding = DispatchSemaphore(value: 0)
        let release = DispatchSemaphore(value: 0)
        let holderDone = DispatchSemaphore(value: 0)
        let holderResult = Locked<Int?>(nil)
        Thread {
            let value = try? pool.withConnection { connection -> Int in
                holding.signal()
                release.wait()
                return try connection.execute("SELECT 5").first?.int(0) ?? -1
            }
            holderResult.withLock { $0 = value }
            holderDone.signal()
        }.start()
        XCTAssertEqual(holding.wait(timeout: .now() + 60), .success)

        // The only connection is lent out: this caller waits until close() releases it.
        let waiterDone = DispatchSemaphore(value: 0)
        let waiterError = Locked<StoreError?>(nil)
        Thread {
            do {
                _ = try pool.withConnection { _ in 1 }
            } catch {
                waiterError.withLock { $0 = error as? StoreError }
            }
            waiterDone.signal()
        }.start()

        pool.close()
        XCTAssertEqual(waiterDone.wait(timeout: .now() + 60), .success, "the waiter was not released")
        XCTAssertEqual(waiterError.current?.code, .poolClosed)

        // The borrower finishes its work on the connection it holds.
        release.signal()
        XCTAssertEqual(holderDone.wait(timeout: .now() + 60), .success)
        XCTAssertEqual(holderResult.current, 5)
        XCTAssertEqual(storeError { try pool.withConnection { _ in 1 } }?.code, .poolClosed)
    }

    func testConnectionIsReturnedWhenTheBodyThrows() throws {
        let pool = ConnectionPool(connectionString: try Self.database.get(), maximumConnections: 1)
        XCTAssertThrowsError(try pool.withConnection { _ in throw DeliberateRollback() }) { error in
            XCTAssertEqual(error as? DeliberateRollback, DeliberateRollback())
        }
        // With a pool of one, this would wait forever had the connection not come back.
        let done = DispatchSemaphore(value: 0)
        let value = Locked<Int?>(nil)
        Thread {
            value.withLock { $0 = try? pool.withConnection { try $0.execute("SELECT 3").first?.int(0) } }
            done.signal()
        }.start()
        XCTAssertEqual(done.wait(timeout: .now() + 60), .success, "the pool's only connection was not returned")
        XCTAssertEqual(value.current, 3)
        pool.close()
    }

    func testFailedConnectDoesNotLeakItsSlot() throws {
        let bad = "host=/tmp/parley-no-such-dir-\(Fixture.hex().prefix(8)) port=5432 dbname=nothing"
        let pool = ConnectionPool(connectionString: bad, maximumConnections: 1)
        let first = try XCTUnwrap(storeError { try pool.withConnection { _ in 1 } })
        XCTAssertEqual(first.code, .connectionFailed)

        // Had the first failure kept the only slot, these would block forever.
        let done = DispatchSemaphore(value: 0)
        let codes = Locked<[StoreError.Code]>([])
        Thread {
            for _ in 0..<3 {
                do {
                    _ = try pool.withConnection { _ in 1 }
                } catch {
                    codes.withLock { $0.append((error as? StoreError)?.code ?? .queryFailed) }
                }
            }
            done.signal()
        }.start()
        XCTAssertEqual(done.wait(timeout: .now() + 60), .success, "a failed connect kept the pool's only slot")
        XCTAssertEqual(codes.current, [.connectionFailed, .connectionFailed, .connectionFailed])
        pool.close()
    }

    func testBrokenConnectionIsReconnectedOnItsNextCheckout() throws {
        let name = "pool-heal-\(Fixture.hex().prefix(8))"
        let pool = ConnectionPool(connectionString: try Self.database.get(), maximumConnections: 1, applicationName: name)
        let pid = try pool.withConnection { try XCTUnwrap($0.execute("SELECT pg_backend_pid()").first).int64(0) }
        let killer = try PostgresConnection(connectionString: Self.database.get())
        XCTAssertEqual(try killer.execute("SELECT pg_terminate_backend($1::int, 10000)", [.integer(pid)]).first?.bool(0), true)

        let error = try XCTUnwrap(storeError { try pool.withConnection { try $0.execute("SELECT 1") } })
        XCTAssertTrue(error.isTransient, error.debugDescription)
        let newPID = try pool.withConnection { try XCTUnwrap($0.execute("SELECT pg_backend_pid()").first).int64(0) }
        XCTAssertNotEqual(newPID, pid)
        XCTAssertEqual(try backends(named: name, on: killer), 1)
        pool.close()
    }
}
