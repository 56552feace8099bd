import ParleyCrypto
import ParleyProtocol
import XCTest

/// The membership chain rules on hand-built statements: no database, a fake signature
/// scheme (a "signature" is SHA-256 of the signer's id and the text), a fixed clock.
final class MembershipRulesTests: XCTestCase {
    // Ids in a known order: a < b < c < d.
    let a = ID("aaaaaaaa-0000-4000-8000-000000000001")!
    let b = ID("bbbbbbbb-0000-4000-8000-000000000002")!
    let c = ID("cccccccc-0000-4000-8000-000000000003")!
    let d = ID("dddddddd-0000-4000-8000-000000000004")!
    let channel = ID("0c0c0c0c-0000-4000-8000-00000000000c")!
    let now = 1_700_000_000
    let window = 300

    static func fakeSig(_ signer: ID, _ text: [UInt8]) -> [UInt8] { SHA256.hash(Array(signer.string.utf8) + text) }
    let verify: MembershipRules.Verifier = { signer, text, sig in sig == MembershipRulesTests.fakeSig(signer, text) }

    func signed(
        version: Int = 1, prev: [UInt8] = [], ts: Int? = nil, owner: ID?, members: [ID], signer: ID
    ) -> MembershipStatement {
        var statement = MembershipStatement(
            version: version, prev: prev, ts: ts ?? now, ownerID: owner, members: members, signerID: signer, sig: [])
        statement.sig = Self.fakeSig(signer, statement.signedText(channelID: channel))
        return statement
    }

    func createContext(requester: ID) -> MembershipRules.Context {
        MembershipRules.Context(channelID: channel, requester: requester, change: .create, now: now, windowSeconds: window)
    }

    func changeContext(
        _ previous: MembershipStatement, requester: ID, change: MembershipRules.Change, successor: ID? = nil
    ) -> MembershipRules.Context {
        MembershipRules.Context(
            channelID: channel, requester: requester, change: change, previous: previous,
            previousTextHash: SHA256.hash(previous.signedText(channelID: channel)), successor: successor,
            now: now, windowSeconds: window)
    }

    /// The next statement after `previous`, correctly chained unless told otherwise.
    func after(
        _ previous: MembershipStatement, members: [ID], owner: ID?? = .none, signer: ID,
        version: Int? = nil, prev: [UInt8]? = nil, ts: Int? = nil
    ) -> MembershipStatement {
        signed(version: version ?? previous.version + 1,
               prev: prev ?? SHA256.hash(previous.signedText(channelID: channel)),
               ts: ts, owner: owner ?? previous.ownerID, members: members, signer: signer)
    }

    func assertRejected(
        _ result: Result<MembershipRules.Accepted, MembershipRules.Rejection>, _ code: ErrorCode,
        file: StaticString = #filePath, line: UInt = #line
    ) {
        switch result {
        case .success(let accepted): XCTFail("expected \(code.rawValue), accepted \(accepted)", file: file, line: line)
        case .failure(let rejection): XCTAssertEqual(rejection.code, code, rejection.message, file: file, line: line)
        }
    }

    func accepted(
        _ result: Result<MembershipRules.Accepted, MembershipRules.Rejection>,
        file: StaticString = #filePath, line: UInt = #line
    ) -> MembershipRules.Accepted? {
        switch result {
        case .success(let accepted): return accepted
        case .failure(let rejection):
            XCTFail("expected acceptance, got \(rejection.code.rawValue): \(rejection.message)", file: file, line: line)
            return nil
        }
    }

    var v1: MembershipStatement { signed(owner: a, members: [a, b, c], signer: a) }

    // MARK: - Version 1

    func testFirstStatementAccepted() {
        let result = accepted(MembershipRules.check(v1, createContext(requester: a), verify: verify))
        XCTAssertEqual(result?.owner, a)
        XCTAssertEqual(result?.statement, v1)
        XCTAssertEqual(result?.closesChannel, false)
    }

    func testFirstStatementStructure() {
        let context = createContext(requester: a)
        assertRejected(MembershipRules.check(signed(version: 2, owner: a, members: [a], signer: a), context, verify: verify), .badRequest)
        assertRejected(MembershipRules.check(signed(prev: Array(repeating: 7, count: 32), owner: a, members: [a], signer: a),
                                             context, verify: verify), .badRequest)
        assertRejected(MembershipRules.check(signed(owner: nil, members: [a], signer: a), context, verify: verify), .badRequest)
        assertRejected(MembershipRules.check(signed(owner: a, members: [a, b, b], signer: a), context, verify: verify), .badRequest)
        assertRejected(MembershipRules.check(signed(owner: a, members: [], signer: a), context, verify: verify), .badRequest)
        // The creator must be a member.
        assertRejected(MembershipRules.check(signed(owner: a, members: [b, c], signer: a), context, verify: verify), .badRequest)
    }

    func testFirstStatementMemberLimit() {
        var context = createContext(requester: a)
        context.maxMembers = 3
        XCTAssertNotNil(accepted(MembershipRules.check(signed(owner: a, members: [a, b, c], signer: a), context, verify: verify)))
        assertRejected(MembershipRules.check(signed(owner: a, members: [a, b, c, d], signer: a), context, verify: verify), .badRequest)
    }

    func testFirstStatementSigner() {
        // Signed (validly) by b, sent by a: the requester is not the signer.
        assertRejected(MembershipRules.check(signed(owner: b, members: [a, b], signer: b), createContext(requester: a),
                                             verify: verify), .forbidden)
        // Signer and requester a, but owner b: version 1 is signed by its owner.
        assertRejected(MembershipRules.check(signed(owner: b, members: [a, b], signer: a), createContext(requester: a),
                                             verify: verify), .forbidden)
    }

    func testFirstStatementBadSignature() {
        var statement = v1
        statement.sig = Self.fakeSig(b, statement.signedText(channelID: channel))
        assertRejected(MembershipRules.check(statement, createContext(requester: a), verify: verify), .forbidden)
        // Signed for another channel.
        var other = v1
        other.sig = Self.fakeSig(a, other.signedText(channelID: ID.random()))
        assertRejected(MembershipRules.check(other, createContext(requester: a), verify: verify), .forbidden)
    }

    func testTimestampWindowIsInclusive() {
        let context = createContext(requester: a)
        for ts in [now - window, now + window, now] {
            XCTAssertNotNil(accepted(MembershipRules.check(signed(ts: ts, owner: a, members: [a], signer: a), context, verify: verify)))
        }
        for ts in [now - window - 1, now + window + 1, 0, Int(Limits.maxInteger)] {
            assertRejected(MembershipRules.check(signed(ts: ts, owner: a, members: [a], signer: a), context, verify: verify),
                           .badTimestamp)
        }
    }

    func testCreateWithAPreviousStatementIsRefused() {
        var context = createContext(requester: a)
        context.previous = v1
        assertRejected(MembershipRules.check(v1, context, verify: verify), .badRequest)
    }

    // MARK: - Add

    func testAddAccepted() {
        let v2 = after(v1, members: [a, b, c, d], signer: a)
        let result = accepted(MembershipRules.check(v2, changeContext(v1, requester: a, change: .add(d)), verify: verify))
        XCTAssertEqual(result?.subject, d)
        XCTAssertEqual(result?.action, .added)
        XCTAssertEqual(result?.owner, a)
        XCTAssertEqual(result?.ownerChanged, false)
    }

    func testVersionAndPrevMustChain() {
        let context = changeContext(v1, requester: a, change: .add(d))
        // A stale version (a concurrent change won) or one skipping ahead.
        assertRejected(MembershipRules.check(after(v1, members: [a, b, c, d], signer: a, version: 1), context, verify: verify), .badRequest)
        assertRejected(MembershipRules.check(after(v1, members: [a, b, c, d], signer: a, version: 3), context, verify: verify), .badRequest)
        assertRejected(MembershipRules.check(after(v1, members: [a, b, c, d], signer: a, prev: Array(repeating: 1, count: 32)),
                                             context, verify: verify), .badRequest)
        assertRejected(MembershipRules.check(after(v1, members: [a, b, c, d], signer: a, prev: []), context, verify: verify), .badRequest)
    }

    func testAddMustAddExactlyTheRequestedMember() {
        let v1 = signed(owner: a, members: [a, b], signer: a)
        // Two added at once.
        assertRejected(MembershipRules.check(after(v1, members: [a, b, c, d], signer: a),
                                             changeContext(v1, requester: a, change: .add(c)), verify: verify), .badRequest)
        // One added and one removed.
        assertRejected(MembershipRules.check(after(v1, members: [a, c], signer: a),
                                             changeContext(v1, requester: a, change: .add(c)), verify: verify), .badRequest)
        // Nothing changes (the user is already a member).
        assertRejected(MembershipRules.check(after(v1, members: [a, b], signer: a),
                                             changeContext(v1, requester: a, change: .add(b)), verify: verify), .badRequest)
        // The request's user_id is not the member added.
        assertRejected(MembershipRules.check(after(v1, members: [a, b, c], signer: a),
                                             changeContext(v1, requester: a, change: .add(d)), verify: verify), .badRequest)
        // An add request whose statement removes.
        assertRejected(MembershipRules.check(after(v1, members: [a], signer: a),
                                             changeContext(v1, requester: a, change: .add(b)), verify: verify), .badRequest)
        // Duplicates.
        assertRejected(MembershipRules.check(after(v1, members: [a, b, c, c], signer: a),
                                             changeContext(v1, requester: a, change: .add(c)), verify: verify), .badRequest)
    }

    func testAddRespectsTheMemberLimit() {
        let v1 = signed(owner: a, members: [a, b], signer: a)
        var context = changeContext(v1, requester: a, change: .add(c))
        context.maxMembers = 2
        assertRejected(MembershipRules.check(after(v1, members: [a, b, c], signer: a), context, verify: verify), .badRequest)
    }

    func testAddSignerRules() {
        let v2 = after(v1, members: [a, b, c, d], signer: b)
        // b signs and sends: b is not the owner.
        assertRejected(MembershipRules.check(v2, changeContext(v1, requester: b, change: .add(d)), verify: verify), .forbidden)
        // a sends what b signed: the requester must be the signer.
        assertRejected(MembershipRules.check(v2, changeContext(v1, requester: a, change: .add(d)), verify: verify), .forbidden)
        // Owner's statement with a bad signature.
        var bad = after(v1, members: [a, b, c, d], signer: a)
        bad.sig = Array(repeating: 0, count: 32)
        assertRejected(MembershipRules.check(bad, changeContext(v1, requester: a, change: .add(d)), verify: verify), .forbidden)
    }

    func testOwnerMayNotChangeOnAdd() {
        let v2 = after(v1, members: [a, b, c, d], owner: .some(b), signer: a)
        assertRejected(MembershipRules.check(v2, changeContext(v1, requester: a, change: .add(d)), verify: verify), .badRequest)
        let closing = after(v1, members: [a, b, c, d], owner: .some(nil), signer: a)
        assertRejected(MembershipRules.check(closing, changeContext(v1, requester: a, change: .add(d)), verify: verify), .badRequest)
    }

    func testTimestampNotEarlierThanPrevious() {
        let v1 = signed(ts: now - 10, owner: a, members: [a, b, c], signer: a)
        let context = changeContext(v1, requester: a, change: .add(d))
        assertRejected(MembershipRules.check(after(v1, members: [a, b, c, d], signer: a, ts: now - 11), context, verify: verify),
                       .badRequest)
        XCTAssertNotNil(accepted(MembershipRules.check(after(v1, members: [a, b, c, d], signer: a, ts: now - 10), context,
                                                       verify: verify)))
        // Not earlier than the previous, but outside the window.
        let future = signed(ts: now + 1000, owner: a, members: [a, b, c], signer: a)
        assertRejected(MembershipRules.check(after(future, members: [a, b, c, d], signer: a, ts: now + 1000),
                                             changeContext(future, requester: a, change: .add(d)), verify: verify), .badTimestamp)
    }

    // MARK: - Remove and leave

    func testOwnerRemovesAMember() {
        let v2 = after(v1, members: [a, c], signer: a)
        let result = accepted(MembershipRules.check(v2, changeContext(v1, requester: a, change: .remove(b)), verify: verify))
        XCTAssertEqual(result?.action, .removed)
        XCTAssertEqual(result?.subject, b)
        XCTAssertEqual(result?.owner, a)
    }

    func testRemoveMustRemoveExactlyTheRequestedMember() {
        // Removing a non-member (nothing changes).
        assertRejected(MembershipRules.check(after(v1, members: [a, b, c], signer: a),
                                             changeContext(v1, requester: a, change: .remove(d)), verify: verify), .badRequest)
        // Two removed.
        assertRejected(MembershipRules.check(after(v1, members: [a], signer: a),
                                             changeContext(v1, requester: a, change: .remove(b)), verify: verify), .badRequest)
        // user_id is another member than the one removed.
        assertRejected(MembershipRules.check(after(v1, members: [a, b], signer: a),
                                             changeContext(v1, requester: a, change: .remove(b)), verify: verify), .badRequest)
        // A remove request whose statement adds.
        assertRejected(MembershipRules.check(after(v1, members: [a, b, c, d], signer: a),
                                             changeContext(v1, requester: a, change: .remove(d)), verify: verify), .badRequest)
    }

    func testMemberLeavesWithItsOwnSignature() {
        let v2 = after(v1, members: [a, c], signer: b)
        let result = accepted(MembershipRules.check(v2, changeContext(v1, requester: b, change: .remove(b)), verify: verify))
        XCTAssertEqual(result?.owner, a)
        XCTAssertEqual(result?.closesChannel, false)
    }

    func testMemberMayNotRemoveOthers() {
        // c signs b's removal: neither the owner nor a leave.
        let v2 = after(v1, members: [a, c], signer: c)
        assertRejected(MembershipRules.check(v2, changeContext(v1, requester: c, change: .remove(b)), verify: verify), .forbidden)
        // b's leave signed by the owner but sent by b.
        let v2b = after(v1, members: [a, c], signer: a)
        assertRejected(MembershipRules.check(v2b, changeContext(v1, requester: b, change: .remove(b)), verify: verify), .forbidden)
        // A member removing the owner.
        let v2c = after(v1, members: [b, c], owner: .some(b), signer: b)
        assertRejected(MembershipRules.check(v2c, changeContext(v1, requester: b, change: .remove(a), successor: b),
                                             verify: verify), .forbidden)
    }

    func testOwnerLeavesNamingTheSuccessor() {
        let v2 = after(v1, members: [b, c], owner: .some(b), signer: a)
        let result = accepted(MembershipRules.check(v2, changeContext(v1, requester: a, change: .remove(a), successor: b),
                                                    verify: verify))
        XCTAssertEqual(result?.owner, b)
        XCTAssertEqual(result?.previousOwner, a)
        XCTAssertEqual(result?.ownerChanged, true)
    }

    func testOwnerLeavesNamingAnotherOwnerIsRefused() {
        let wrong = after(v1, members: [b, c], owner: .some(c), signer: a)
        assertRejected(MembershipRules.check(wrong, changeContext(v1, requester: a, change: .remove(a), successor: b),
                                             verify: verify), .badRequest)
        let unchanged = after(v1, members: [b, c], signer: a)
        assertRejected(MembershipRules.check(unchanged, changeContext(v1, requester: a, change: .remove(a), successor: b),
                                             verify: verify), .badRequest)
        let empty = after(v1, members: [b, c], owner: .some(nil), signer: a)
        assertRejected(MembershipRules.check(empty, changeContext(v1, requester: a, change: .remove(a), successor: b),
                                             verify: verify), .badRequest)
    }

    func testOwnerChangesOnlyWhenTheOwnerLeaves() {
        let v2 = after(v1, members: [a, c], owner: .some(c), signer: b)
        assertRejected(MembershipRules.check(v2, changeContext(v1, requester: b, change: .remove(b), successor: b),
                                             verify: verify), .badRequest)
    }

    func testLastMemberLeavesAndClosesTheChannel() {
        let alone = signed(owner: a, members: [a], signer: a)
        let closing = after(alone, members: [], owner: .some(nil), signer: a)
        let result = accepted(MembershipRules.check(closing, changeContext(alone, requester: a, change: .remove(a)), verify: verify))
        XCTAssertEqual(result?.closesChannel, true)
        XCTAssertNil(result?.owner)
        // The last statement must have an empty owner_id.
        let named = after(alone, members: [], owner: .some(a), signer: a)
        assertRejected(MembershipRules.check(named, changeContext(alone, requester: a, change: .remove(a)), verify: verify),
                       .badRequest)
    }

    func testClosedChannelTakesNoChanges() {
        let alone = signed(owner: a, members: [a], signer: a)
        let closed = after(alone, members: [], owner: .some(nil), signer: a)
        let reopen = after(closed, members: [a], owner: .some(a), signer: a)
        assertRejected(MembershipRules.check(reopen, changeContext(closed, requester: a, change: .add(a)), verify: verify),
                       .forbidden)
    }

    func testChangeWithoutAPreviousStatementIsRefused() {
        let context = MembershipRules.Context(channelID: channel, requester: a, change: .add(b), now: now, windowSeconds: window)
        assertRejected(MembershipRules.check(v1, context, verify: verify), .badRequest)
    }

    func testOrderOfChecks() {
        // Broken chain and wrong signer: the chain (bad_request) is checked first.
        let both = after(v1, members: [a, b, c, d], signer: b, prev: Array(repeating: 9, count: 32))
        assertRejected(MembershipRules.check(both, changeContext(v1, requester: b, change: .add(d)), verify: verify), .badRequest)
        // Wrong signer and stale ts: forbidden first.
        let signerAndTs = after(v1, members: [a, b, c, d], signer: b, ts: now - 1000)
        assertRejected(MembershipRules.check(signerAndTs, changeContext(v1, requester: b, change: .add(d)), verify: verify),
                       .forbidden)
        // Out of the window with a bad signature: bad_timestamp first.
        var windowAndSig = after(v1, members: [a, b, c, d], signer: a, ts: now + 1000)
        windowAndSig.sig = []
        assertRejected(MembershipRules.check(windowAndSig, changeContext(v1, requester: a, change: .add(d)), verify: verify),
                       .badTimestamp)
    }

    func testVerifierSeesTheSignerAndTheSignedText() {
        var calls: [(ID, [UInt8])] = []
        let v2 = after(v1, members: [a, b, c, d], signer: a)
        _ = MembershipRules.check(v2, changeContext(v1, requester: a, change: .add(d))) { signer, text, sig in
            calls.append((signer, text))
            return sig == v2.sig
        }
        XCTAssertEqual(calls.count, 1)
        XCTAssertEqual(calls.first?.0, a)
        XCTAssertEqual(calls.first?.1, v2.signedText(channelID: channel))
    }
    // MARK: - Shared with clients

    func testWithoutAClockTheWindowIsNotChecked() {
        // A client checking a stored chain has no time of submission to compare with.
        var context = createContext(requester: a)
        context.now = nil
        XCTAssertNotNil(accepted(MembershipRules.check(signed(ts: 0, owner: a, members: [a], signer: a), context, verify: verify)))
        let v2 = after(v1, members: [a, b, c, d], signer: a, ts: now + 10_000)
        var change = changeContext(v1, requester: a, change: .add(d))
        change.now = nil
        XCTAssertNotNil(accepted(MembershipRules.check(v2, change, verify: verify)))
    }

    func testSuccessorFromTheChain() {
        // v1 {a, c}; v2 adds b; v3 removes c; v4 adds c again.
        let first = signed(owner: a, members: [a, c], signer: a)
        let second = after(first, members: [a, b, c], signer: a)
        XCTAssertEqual(MembershipRules.successor(in: [first, second], leaving: a), c, "v1 outranks v2 though b < c")
        let third = after(second, members: [a, b], signer: a)
        let fourth = after(third, members: [a, b, c], signer: a)
        XCTAssertEqual(MembershipRules.successor(in: [first, second, third, fourth], leaving: a), b, "the latest join counts")
        // Ties within one version go to the smaller id.
        let together = signed(owner: d, members: [d, c, b], signer: d)
        XCTAssertEqual(MembershipRules.successor(in: [together], leaving: d), b)
        // Nobody left.
        XCTAssertNil(MembershipRules.successor(in: [signed(owner: a, members: [a], signer: a)], leaving: a))
        XCTAssertNil(MembershipRules.successor(in: [], leaving: a))
    }
}
