@testable import ParleyServer
import ParleyProtocol
import XCTest

/// The token buckets behind `rate_limited` (pure; no sockets, no clock of their own).
final class RateLimitTests: XCTestCase {
    func testBucketAllowsTheBurstThenAsksToWait() {
        var bucket = TokenBucket(rate: 50, burst: 200, now: 100)
        for _ in 0..<200 { XCTAssertNil(bucket.take(now: 100)) }
        let wait = bucket.take(now: 100)
        XCTAssertEqual(wait, 20, "one token at 50/s is 20 ms away")
        XCTAssertNil(bucket.take(now: 100.02), "refilled after the wait it named")
        XCTAssertNotNil(bucket.take(now: 100.02))
    }

    func testBucketRefillsUpToTheBurstOnly() {
        var bucket = TokenBucket(rate: 10, burst: 5, now: 0)
        for _ in 0..<5 { XCTAssertNil(bucket.take(now: 0)) }
        XCTAssertNotNil(bucket.take(now: 0))
        // An hour later it holds 5 again, not 36,000.
        for _ in 0..<5 { XCTAssertNil(bucket.take(now: 3600)) }
        XCTAssertNotNil(bucket.take(now: 3600))
        XCTAssertTrue(bucket.isFull(now: 7200))
    }

    func testLoginsAreLimitedPerUsernameAndPerAddress() {
        var limiter = RateLimiter(limits: RateLimits())
        let login = { (name: String) in Request.login(.init(username: name, passkey: "x")) }
        for _ in 0..<10 { XCTAssertNil(limiter.check(login("alice"), user: nil, address: "10.0.0.1")) }
        XCTAssertNotNil(limiter.check(login("alice"), user: nil, address: "10.0.0.2"), "the name is exhausted")
        XCTAssertNotNil(limiter.check(login("bob"), user: nil, address: "10.0.0.1"), "the address is exhausted")
        XCTAssertNil(limiter.check(login("carol"), user: nil, address: "10.0.0.3"))
    }

    func testMessagesAreLimitedPerUserAndSwitchOff() {
        var limits = RateLimits()
        limits.messageBurst = 3
        var limiter = RateLimiter(limits: limits)
        let user = ID.random()
        let message = Request.message(.init(channelID: .random(), keyID: .random(), iv: Array(repeating: 0, count: 12),
                                            ciphertext: Array(repeating: 0, count: 16), ts: 0, clientMsgID: .random()))
        for _ in 0..<3 { XCTAssertNil(limiter.check(message, user: user, address: "a")) }
        XCTAssertNotNil(limiter.check(message, user: user, address: "a"))
        XCTAssertNil(limiter.check(message, user: .random(), address: "a"), "another user has its own bucket")

        limits.enabled = false
        var off = RateLimiter(limits: limits)
        for _ in 0..<100 { XCTAssertNil(off.check(message, user: user, address: "a")) }
    }
}
