@testable import ParleyServer
import XCTest

/// The hand-over state machine of one subscription (service thread, pure).
final class SubscriptionStateTests: XCTestCase {
    private func frame(_ bytes: Int) -> FrameBuffer { FrameBuffer(Array(repeating: 0x61, count: bytes)) }

    func testLiveFramesWaitDuringTheReplayAndCountTowardTheBound() {
        var subscription = Subscription(generation: 1)
        subscription.phase = .replaying(through: 5, pageInFlight: true)
        subscription.lastDelivered = 3
        XCTAssertNil(subscription.accept(seq: 6, frame: frame(100)))
        XCTAssertNil(subscription.accept(seq: 7, frame: frame(50)))
        XCTAssertEqual(subscription.heldBytes, 150, "held frames are pending bytes of the connection")

        subscription.lastDelivered = 6   // the replay reached 6 (the live 6 raced it)
        let released = subscription.goLive()
        XCTAssertEqual(released.map(\.count), [50], "only seqs above what was delivered")
        XCTAssertEqual(subscription.heldBytes, 0)
        XCTAssertEqual(subscription.lastDelivered, 7)
        XCTAssertNil(subscription.accept(seq: 7, frame: frame(1)), "never twice")
        XCTAssertEqual(subscription.accept(seq: 8, frame: frame(1))?.count, 1)
    }

    func testDroppingHeldFramesFreesThem() {
        var subscription = Subscription(generation: 1)
        XCTAssertNil(subscription.accept(seq: 1, frame: frame(4096)))
        XCTAssertEqual(subscription.heldBytes, 4096)
        subscription.dropHeld()
        XCTAssertEqual(subscription.heldBytes, 0)
        XCTAssertTrue(subscription.held.isEmpty)
    }
}
