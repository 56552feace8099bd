import Foundation
import ParleyCrypto
import ParleyProtocol
@testable import ParleyServer
import ParleyStore
import ParleyTestSupport
import XCTest

/// Channels, signed membership and channel keys through `RelayService.handle`, against a
/// real PostgreSQL and real RSA signatures.
final class ChannelKeyTests: XCTestCase {
    // MARK: - channel.create

    func testCreateRepliesMembersAndTellsTheOthers() throws {
        let relay = try ChannelTestRelay()
        let (alice, bob, carol) = (try relay.makeUser(), try relay.makeUser(), try relay.makeUser())
        let channel = ID.random()
        let v1 = try relay.statement(channel: channel, version: 1, prev: [], owner: alice.id,
                                     members: [alice.id, bob.id, carol.id], signer: alice)
        let before = relay.nowMillis
        let outcome = relay.send(.channelCreate(.init(channelID: channel, name: "général", membership: v1)), as: alice)
        guard case .channelCreate(let created) = try relay.result(outcome) else { return XCTFail("not channel.create") }
        XCTAssertEqual(created.channelID, channel)
        XCTAssertEqual(created.name, "général")
        XCTAssertEqual(created.members.map(\.userID), [alice.id, bob.id, carol.id].sorted())
        for member in created.members {
            let user = [alice, bob, carol].first { $0.id == member.userID }
            XCTAssertEqual(member.username, user?.username)
            XCTAssertEqual(member.publicKey, user?.key.publicKey.spkiDER)
            XCTAssertEqual(member.role, member.userID == alice.id ? .owner : .member)
            XCTAssertGreaterThanOrEqual(member.joinedAt, before - 1000)
            XCTAssertLessThanOrEqual(member.joinedAt, relay.nowMillis + 1000)
        }

        // One event.member per other member, none for the creator.
        XCTAssertEqual(outcome.effects.count, 2)
        var told: [ID] = []
        for effect in outcome.effects {
            guard case .member(let event, let members, _) = effect else { return XCTFail("not a member effect") }
            XCTAssertEqual(event.channelID, channel)
            XCTAssertEqual(event.action, .added)
            XCTAssertEqual(event.by, alice.id)
            XCTAssertEqual(event.membership, v1)
            XCTAssertEqual(members.sorted(), v1.members)
            told.append(event.userID)
        }
        XCTAssertEqual(told.sorted(), [bob.id, carol.id].sorted())

        // Stored as sent: the chain holds v1 with exactly its fields.
        guard case .channelMembership(let chain) = try relay.result(
            relay.send(.channelMembership(.init(channelID: channel)), as: bob)) else { return XCTFail("not membership") }
        XCTAssertEqual(chain.statements, [v1])
    }

    func testCreateWithAUsedIDIsBadRequestAndARefusedCreateLeavesTheIDUnused() throws {
        let relay = try ChannelTestRelay()
        let (alice, bob) = (try relay.makeUser(), try relay.makeUser())
        let channel = ID.random()
        // Refused (bad signature): the id stays free.
        let forged = try relay.statement(channel: channel, version: 1, prev: [], owner: alice.id, members: [alice.id],
                                         signer: alice, sig: bob.key.signature(for: Array("x".utf8)))
        try relay.expect(.forbidden, relay.send(.channelCreate(.init(channelID: channel, name: "a", membership: forged)), as: alice))
        let v1 = try relay.statement(channel: channel, version: 1, prev: [], owner: alice.id, members: [alice.id], signer: alice)
        _ = try relay.result(relay.send(.channelCreate(.init(channelID: channel, name: "a", membership: v1)), as: alice))
        // Used now, by anyone.
        try relay.expect(.badRequest, relay.send(.channelCreate(.init(channelID: channel, name: "a", membership: v1)), as: alice))
        let bobs = try relay.statement(channel: channel, version: 1, prev: [], owner: bob.id, members: [bob.id], signer: bob)
        try relay.expect(.badRequest, relay.send(.channelCreate(.init(channelID: channel, name: "b", membership: bobs)), as: bob))
    }

    func testCreateStatementRules() throws {
        let relay = try ChannelTestRelay()
        let (alice, bob) = (try relay.makeUser(), try relay.makeUser())
        func create(_ statement: MembershipStatement, channel: ID, as user: ChannelTestUser) -> Outcome {
            relay.send(.channelCreate(.init(channelID: channel, name: "n", membership: statement)), as: user)
        }
        let channel = ID.random()
        // A signature by someone else.
        let badSig = try relay.statement(channel: channel, version: 1, prev: [], owner: alice.id,
                                         members: [alice.id, bob.id], signer: alice,
                                         sig: bob.key.signature(for: SignedText.membership(
                                            channelID: channel, version: 1, prev: [], ts: relay.now, ownerID: alice.id,
                                            members: [alice.id, bob.id])))
        try relay.expect(.forbidden, create(badSig, channel: channel, as: alice))
        // Signed (validly) by bob, sent by alice.
        let bobsOwn = try relay.statement(channel: channel, version: 1, prev: [], owner: bob.id,
                                          members: [alice.id, bob.id], signer: bob)
        try relay.expect(.forbidden, create(bobsOwn, channel: channel, as: alice))
        // Duplicate members.
        let duplicates = try relay.statement(channel: channel, version: 1, prev: [], owner: alice.id,
                                             members: [alice.id, bob.id, bob.id], signer: alice)
        try relay.expect(.badRequest, create(duplicates, channel: channel, as: alice))
        // Creator not a member.
        let notIn = try relay.statement(channel: channel, version: 1, prev: [], owner: alice.id, members: [bob.id], signer: alice)
        try relay.expect(.badRequest, create(notIn, channel: channel, as: alice))
        // Unknown user.
        let unknown = try relay.statement(channel: channel, version: 1, prev: [], owner: alice.id,
                                          members: [alice.id, ID.random()], signer: alice)
        try relay.expect(.notFound, create(unknown, channel: channel, as: alice))
        // ts out of the window, either side.
        for ts in [relay.now - 400, relay.now + 400] {
            let stale = try relay.statement(channel: channel, version: 1, prev: [], ts: ts, owner: alice.id,
                                            members: [alice.id], signer: alice)
            try relay.expect(.badTimestamp, create(stale, channel: channel, as: alice))
        }
        // Version 1 with a prev, and a version other than 1.
        let withPrev = try relay.statement(channel: channel, version: 1, prev: Array(repeating: 3, count: 32),
                                           owner: alice.id, members: [alice.id], signer: alice)
        try relay.expect(.badRequest, create(withPrev, channel: channel, as: alice))
        let version2 = try relay.statement(channel: channel, version: 2, prev: Array(repeating: 3, count: 32),
                                           owner: alice.id, members: [alice.id], signer: alice)
        try relay.expect(.badRequest, create(version2, channel: channel, as: alice))

        // None of the refusals used the id or stored anything.
        XCTAssertEqual(try relay.db.execute("SELECT count(*) FROM channels").first?.int(0), 0)
        let good = try relay.statement(channel: channel, version: 1, prev: [], owner: alice.id, members: [alice.id], signer: alice)
        _ = try relay.result(create(good, channel: channel, as: alice))
    }

    // MARK: - channels, channel.members, channel.membership

    func testChannelsListsTheRequestersChannels() throws {
        let relay = try ChannelTestRelay()
        let (alice, bob, carol) = (try relay.makeUser(), try relay.makeUser(), try relay.makeUser())
        let (first, _) = try relay.createChannel(owner: alice, others: [bob], name: "first")
        let (second, v1) = try relay.createChannel(owner: bob, name: "second")
        try relay.add(alice, to: second, after: v1, signer: bob)
        let keyID = try relay.rotate(channel: first, previous: nil, version: 1, recipients: [alice, bob], creator: alice)

        guard case .channels(let list) = try relay.result(relay.send(.channels, as: alice)) else { return XCTFail("not channels") }
        XCTAssertEqual(list.channels.count, 2)
        let firstSummary = list.channels.first { $0.channelID == first }
        XCTAssertEqual(firstSummary, ChannelSummary(channelID: first, name: "first", role: .owner, lastSeq: 0,
                                                    keyID: keyID, membershipVersion: 1))
        let secondSummary = list.channels.first { $0.channelID == second }
        XCTAssertEqual(secondSummary, ChannelSummary(channelID: second, name: "second", role: .member, lastSeq: 0,
                                                     keyID: nil, membershipVersion: 2))
        guard case .channels(let none) = try relay.result(relay.send(.channels, as: carol)) else { return XCTFail("not channels") }
        XCTAssertEqual(none.channels, [])
    }

    func testMembersAndMembershipChain() throws {
        let relay = try ChannelTestRelay()
        let (alice, bob, carol) = (try relay.makeUser(), try relay.makeUser(), try relay.makeUser())
        let (channel, v1) = try relay.createChannel(owner: alice)
        let v2 = try relay.add(bob, to: channel, after: v1, signer: alice)
        let v3 = try relay.add(carol, to: channel, after: v2, signer: alice)

        guard case .channelMembers(let members) = try relay.result(
            relay.send(.channelMembers(.init(channelID: channel)), as: carol)) else { return XCTFail("not members") }
        XCTAssertEqual(members.membershipVersion, 3)
        XCTAssertEqual(members.members.map(\.userID), [alice.id, bob.id, carol.id].sorted())
        XCTAssertEqual(members.members.first { $0.userID == alice.id }?.role, .owner)
        XCTAssertEqual(members.members.first { $0.userID == carol.id }?.role, .member)

        func chain(after version: Int?) throws -> [MembershipStatement] {
            guard case .channelMembership(let result) = try relay.result(
                relay.send(.channelMembership(.init(channelID: channel, afterVersion: version)), as: bob))
            else { throw ChannelTestFailure("not membership") }
            return result.statements
        }
        XCTAssertEqual(try chain(after: nil), [v1, v2, v3])
        XCTAssertEqual(try chain(after: 0), [v1, v2, v3])
        XCTAssertEqual(try chain(after: 1), [v2, v3])
        XCTAssertEqual(try chain(after: 3), [])
        XCTAssertEqual(try chain(after: 40), [])
        // The chain verifies the way a client checks it.
        let statements = try chain(after: nil)
        for (index, statement) in statements.enumerated().dropFirst() {
            XCTAssertEqual(statement.prev, ChannelTestRelay.textHash(statements[index - 1], channel: channel))
            XCTAssertEqual(statement.members, statement.members.sorted())
        }
    }

    func testNonMembersGetNotMember() throws {
        let relay = try ChannelTestRelay()
        let (alice, eve) = (try relay.makeUser(), try relay.makeUser())
        let (channel, v1) = try relay.createChannel(owner: alice)
        for id in [channel, ID.random()] {
            let addEve = try relay.next(v1, channel: id, members: [alice.id, eve.id], signer: eve)
            let (keys, _) = try relay.keyRequest(channel: id, previous: nil, version: 1, recipients: [alice, eve], creator: eve)
            let requests: [Request] = [
                .channelMembers(.init(channelID: id)),
                .channelMembership(.init(channelID: id, afterVersion: 1)),
                .channelAdd(.init(channelID: id, userID: eve.id, membership: addEve)),
                .channelRemove(.init(channelID: id, userID: alice.id, membership: addEve)),
                .key(.init(channelID: id)),
                .key(.init(channelID: id, keyID: ID.random())),
                .keys(keys),
            ]
            for request in requests {
                try relay.expect(.notMember, relay.send(request, as: eve))
            }
        }
    }

    // MARK: - channel.add

    func testAddAppliesTheChangeAndExpiresTheKey() throws {
        let relay = try ChannelTestRelay()
        let (alice, bob) = (try relay.makeUser(), try relay.makeUser())
        let (channel, v1) = try relay.createChannel(owner: alice)
        let keyID = try relay.rotate(channel: channel, previous: nil, version: 1, recipients: [alice], creator: alice)
        XCTAssertFalse(try relay.fetchKey(channel: channel, as: alice).rotationRequired)

        let v2 = try relay.next(v1, channel: channel, members: [alice.id, bob.id], signer: alice)
        let outcome = relay.send(.channelAdd(.init(channelID: channel, userID: bob.id, membership: v2)), as: alice)
        guard case .channelAdd(let added) = try relay.result(outcome) else { return XCTFail("not channel.add") }
        XCTAssertEqual(added, Response.MembershipChanged(channelID: channel, userID: bob.id, membershipVersion: 2))
        guard outcome.effects.count == 1, case .member(let event, let members, _) = outcome.effects[0] else {
            return XCTFail("expected one member effect")
        }
        XCTAssertEqual(event, Event.Member(channelID: channel, userID: bob.id, action: .added, by: alice.id, membership: v2))
        XCTAssertEqual(members.sorted(), [alice.id, bob.id].sorted())

        guard case .channelMembers(let list) = try relay.result(
            relay.send(.channelMembers(.init(channelID: channel)), as: bob)) else { return XCTFail("not members") }
        XCTAssertEqual(list.membershipVersion, 2)
        XCTAssertEqual(list.members.first { $0.userID == bob.id }?.role, .member)

        // The key expired with the change.
        let key = try relay.fetchKey(channel: channel, as: alice)
        XCTAssertEqual(key.key?.keyID, keyID)
        XCTAssertTrue(key.rotationRequired)
        XCTAssertLessThanOrEqual(try XCTUnwrap(key.key?.expiresAt), relay.nowMillis)
        // The newcomer sees the newest record, without a copy; asking for it by id is not_found.
        let bobsView = try relay.fetchKey(channel: channel, as: bob)
        XCTAssertEqual(bobsView.key?.keyID, keyID)
        XCTAssertNil(bobsView.key?.encryptedKey)
        XCTAssertTrue(bobsView.rotationRequired)
        try relay.expect(.notFound, relay.send(.key(.init(channelID: channel, keyID: keyID)), as: bob))
        // The join cut is the channel's last_seq at the join.
        XCTAssertEqual(try relay.db.execute("SELECT join_seq FROM channel_members WHERE user_id = $1",
                                            [.text(bob.id.string)]).first?.int(0), 0)
    }

    func testAddRules() throws {
        let relay = try ChannelTestRelay()
        let (alice, bob, carol, dave) = (try relay.makeUser(), try relay.makeUser(), try relay.makeUser(), try relay.makeUser())
        let (channel, v1) = try relay.createChannel(owner: alice, others: [bob])
        func add(_ user: ChannelTestUser, _ statement: MembershipStatement, as requester: ChannelTestUser) -> Outcome {
            relay.send(.channelAdd(.init(channelID: channel, userID: user.id, membership: statement)), as: requester)
        }
        // A member that is not the owner.
        let byBob = try relay.next(v1, channel: channel, members: v1.members + [carol.id], signer: bob)
        try relay.expect(.forbidden, add(carol, byBob, as: bob))
        // Signed by the owner, sent by another member.
        let byAlice = try relay.next(v1, channel: channel, members: v1.members + [carol.id], signer: alice)
        try relay.expect(.forbidden, add(carol, byAlice, as: bob))
        // Broken prev.
        let broken = try relay.statement(channel: channel, version: 2, prev: Array(repeating: 1, count: 32),
                                         owner: alice.id, members: v1.members + [carol.id], signer: alice)
        try relay.expect(.badRequest, add(carol, broken, as: alice))
        // Two changes at once.
        let two = try relay.next(v1, channel: channel, members: v1.members + [carol.id, dave.id], signer: alice)
        try relay.expect(.badRequest, add(carol, two, as: alice))
        // user_id is not the member added.
        try relay.expect(.badRequest, add(dave, byAlice, as: alice))
        // Already a member.
        let same = try relay.next(v1, channel: channel, members: v1.members, signer: alice)
        try relay.expect(.badRequest, add(bob, same, as: alice))
        // ts earlier than the previous version's.
        let early = try relay.next(v1, channel: channel, members: v1.members + [carol.id], signer: alice, ts: v1.ts - 5)
        try relay.expect(.badRequest, add(carol, early, as: alice))
        // An unknown user.
        let ghost = ID.random()
        let ghostly = try relay.next(v1, channel: channel, members: v1.members + [ghost], signer: alice)
        try relay.expect(.notFound, relay.send(.channelAdd(.init(channelID: channel, userID: ghost, membership: ghostly)), as: alice))
        // A forged signature.
        var forged = byAlice
        forged.sig = try bob.key.signature(for: forged.signedText(channelID: channel))
        try relay.expect(.forbidden, add(carol, forged, as: alice))

        // Nothing was applied; the good one still is.
        _ = try relay.result(add(carol, byAlice, as: alice))
        // Now byAlice-for-dave at version 2 is stale: a concurrent change won.
        let stale = try relay.next(v1, channel: channel, members: v1.members + [dave.id], signer: alice)
        try relay.expect(.badRequest, add(dave, stale, as: alice))
        XCTAssertEqual(try relay.db.execute("SELECT membership_version FROM channels").first?.int(0), 2)
    }

    func testAddingToAFullChannelIsRefusedAndRemoveCannotAdd() throws {
        let relay = try ChannelTestRelay()
        let (alice, bob) = (try relay.makeUser(), try relay.makeUser())
        let (channel, v1) = try relay.createChannel(owner: alice)
        // channel.remove with a statement that adds.
        let adds = try relay.next(v1, channel: channel, members: [alice.id, bob.id], signer: alice)
        try relay.expect(.badRequest, relay.send(.channelRemove(.init(channelID: channel, userID: bob.id, membership: adds)), as: alice))
        // channel.remove of a non-member.
        let same = try relay.next(v1, channel: channel, members: [alice.id], signer: alice)
        try relay.expect(.badRequest, relay.send(.channelRemove(.init(channelID: channel, userID: bob.id, membership: same)), as: alice))
    }

    // MARK: - channel.remove

    func testMemberLeavesWithItsOwnStatement() throws {
        let relay = try ChannelTestRelay()
        let (alice, bob, carol) = (try relay.makeUser(), try relay.makeUser(), try relay.makeUser())
        let (channel, v1) = try relay.createChannel(owner: alice, others: [bob, carol])
        let v2 = try relay.next(v1, channel: channel, members: [alice.id, carol.id], signer: bob)
        let outcome = relay.send(.channelRemove(.init(channelID: channel, userID: bob.id, membership: v2)), as: bob)
        guard case .channelRemove(let removed) = try relay.result(outcome) else { return XCTFail("not channel.remove") }
        XCTAssertEqual(removed.membershipVersion, 2)
        guard case .member(let event, let members, _) = outcome.effects.first else { return XCTFail("no member effect") }
        XCTAssertEqual(event.action, .removed)
        XCTAssertEqual(event.userID, bob.id)
        XCTAssertEqual(event.by, bob.id)
        XCTAssertEqual(members.sorted(), [alice.id, carol.id].sorted())
        try relay.expect(.notMember, relay.send(.channelMembers(.init(channelID: channel)), as: bob))

        // The owner removes carol; carol could not have removed alice.
        let byCarol = try relay.next(v2, channel: channel, members: [carol.id], owner: .some(carol.id), signer: carol)
        try relay.expect(.forbidden, relay.send(.channelRemove(.init(channelID: channel, userID: alice.id, membership: byCarol)), as: carol))
        let v3 = try relay.next(v2, channel: channel, members: [alice.id], signer: alice)
        _ = try relay.result(relay.send(.channelRemove(.init(channelID: channel, userID: carol.id, membership: v3)), as: alice))
    }

    func testOwnerLeavesToTheSmallerIDOnATie() throws {
        let relay = try ChannelTestRelay()
        let alice = try relay.makeUser()
        let low = try relay.makeUser(id: ID("00000000-1111-4111-8111-" + randomHex(12))!)
        let high = try relay.makeUser(id: ID("ffffffff-1111-4111-8111-" + randomHex(12))!)
        // Created together: the same join time.
        let (channel, v1) = try relay.createChannel(owner: alice, others: [high, low])
        let wrong = try relay.next(v1, channel: channel, members: [low.id, high.id], owner: .some(high.id), signer: alice)
        try relay.expect(.badRequest, relay.send(.channelRemove(.init(channelID: channel, userID: alice.id, membership: wrong)), as: alice))
        let right = try relay.next(v1, channel: channel, members: [low.id, high.id], owner: .some(low.id), signer: alice)
        _ = try relay.result(relay.send(.channelRemove(.init(channelID: channel, userID: alice.id, membership: right)), as: alice))

        guard case .channelMembers(let list) = try relay.result(
            relay.send(.channelMembers(.init(channelID: channel)), as: low)) else { return XCTFail("not members") }
        XCTAssertEqual(list.members.first { $0.userID == low.id }?.role, .owner)
        XCTAssertEqual(list.members.first { $0.userID == high.id }?.role, .member)
        XCTAssertEqual(try relay.db.execute("SELECT owner_id FROM channels").first?.string(0), low.id.string)
        // The new owner may now add; the old one is gone.
        let back = try relay.next(right, channel: channel, members: [low.id, high.id, alice.id], signer: low)
        _ = try relay.result(relay.send(.channelAdd(.init(channelID: channel, userID: alice.id, membership: back)), as: low))
    }

    func testOwnerLeavesToTheEarliestJoin() throws {
        let relay = try ChannelTestRelay()
        let alice = try relay.makeUser()
        let early = try relay.makeUser(id: ID("ffffffff-2222-4222-8222-" + randomHex(12))!)
        let late = try relay.makeUser(id: ID("00000000-2222-4222-8222-" + randomHex(12))!)
        let (channel, v1) = try relay.createChannel(owner: alice, others: [early])
        Thread.sleep(forTimeInterval: 0.01)
        let v2 = try relay.add(late, to: channel, after: v1, signer: alice)
        // The smaller id joined later: the earlier join wins.
        let wrong = try relay.next(v2, channel: channel, members: [early.id, late.id], owner: .some(late.id), signer: alice)
        try relay.expect(.badRequest, relay.send(.channelRemove(.init(channelID: channel, userID: alice.id, membership: wrong)), as: alice))
        let right = try relay.next(v2, channel: channel, members: [early.id, late.id], owner: .some(early.id), signer: alice)
        _ = try relay.result(relay.send(.channelRemove(.init(channelID: channel, userID: alice.id, membership: right)), as: alice))
        guard case .channels(let list) = try relay.result(relay.send(.channels, as: early)) else { return XCTFail("not channels") }
        XCTAssertEqual(list.channels.first?.role, .owner)
    }

    func testLastMemberLeavesAndTheChannelIsClosed() throws {
        let relay = try ChannelTestRelay()
        let alice = try relay.makeUser()
        let (channel, v1) = try relay.createChannel(owner: alice)
        _ = try relay.rotate(channel: channel, previous: nil, version: 1, recipients: [alice], creator: alice)
        let last = try relay.next(v1, channel: channel, members: [], owner: .some(nil), signer: alice)
        let outcome = relay.send(.channelRemove(.init(channelID: channel, userID: alice.id, membership: last)), as: alice)
        _ = try relay.result(outcome)
        guard case .member(let event, let members, _) = outcome.effects.first else { return XCTFail("no member effect") }
        XCTAssertEqual(event.userID, alice.id)
        XCTAssertEqual(members, [])

        let row = try XCTUnwrap(relay.db.execute(
            "SELECT closed_at IS NOT NULL, owner_id IS NULL, membership_version FROM channels").first)
        XCTAssertTrue(try row.bool(0))
        XCTAssertTrue(try row.bool(1))
        XCTAssertEqual(try row.int(2), 2)
        // Closed for good: nobody is a member, so nothing more can be done with it.
        let reopen = try relay.next(last, channel: channel, members: [alice.id], owner: .some(alice.id), signer: alice)
        try relay.expect(.notMember, relay.send(.channelAdd(.init(channelID: channel, userID: alice.id, membership: reopen)), as: alice))
        try relay.expect(.notMember, relay.send(.channelMembership(.init(channelID: channel)), as: alice))
        let again = try relay.statement(channel: channel, version: 1, prev: [], owner: alice.id, members: [alice.id], signer: alice)
        try relay.expect(.badRequest, relay.send(.channelCreate(.init(channelID: channel, name: "again", membership: again)), as: alice))
    }

    func testLastMemberMustNotNameAnOwner() throws {
        let relay = try ChannelTestRelay()
        let alice = try relay.makeUser()
        let (channel, v1) = try relay.createChannel(owner: alice)
        let named = try relay.next(v1, channel: channel, members: [], signer: alice)
        try relay.expect(.badRequest, relay.send(.channelRemove(.init(channelID: channel, userID: alice.id, membership: named)), as: alice))
    }

    // MARK: - key

    func testKeyOfAChannelWithoutKey() throws {
        let relay = try ChannelTestRelay()
        let alice = try relay.makeUser()
        let (channel, _) = try relay.createChannel(owner: alice)
        let key = try relay.fetchKey(channel: channel, as: alice)
        XCTAssertNil(key.key)
        XCTAssertTrue(key.rotationRequired)
        try relay.expect(.notFound, relay.send(.key(.init(channelID: channel, keyID: ID.random())), as: alice))
    }

    // MARK: - keys

    func testRotationStoresTheRecordAndEachMembersCopy() throws {
        let relay = try ChannelTestRelay()
        let (alice, bob) = (try relay.makeUser(), try relay.makeUser())
        let (channel, _) = try relay.createChannel(owner: alice, others: [bob])
        let (request, raw) = try relay.keyRequest(channel: channel, previous: nil, version: 1, recipients: [alice, bob],
                                                  creator: bob)
        let before = relay.nowMillis
        let outcome = relay.send(.keys(request), as: bob)
        guard case .keys(let stored) = try relay.result(outcome) else { return XCTFail("not keys") }
        XCTAssertEqual(stored.keyID, request.keyID)
        XCTAssertGreaterThanOrEqual(stored.createdAt, before - 1000)
        XCTAssertLessThanOrEqual(stored.createdAt, relay.nowMillis + 1000)
        XCTAssertEqual(stored.expiresAt - stored.createdAt, Limits.keyTTLSeconds * 1000)

        guard outcome.effects.count == 1, case .key(let record, let copies, _) = outcome.effects[0] else {
            return XCTFail("expected one key effect")
        }
        XCTAssertNil(record.encryptedKey)
        XCTAssertEqual(record.creatorID, bob.id)
        XCTAssertEqual(record.createdAt, stored.createdAt)
        XCTAssertEqual(Set(copies.keys), [alice.id, bob.id])

        let fetched = try relay.fetchKey(channel: channel, as: alice)
        XCTAssertFalse(fetched.rotationRequired)
        let key = try XCTUnwrap(fetched.key)
        XCTAssertEqual(key.keyID, request.keyID)
        XCTAssertEqual(key.channelID, channel)
        XCTAssertEqual(key.creatorID, bob.id)
        XCTAssertNil(key.previousKeyID)
        XCTAssertEqual(key.membershipVersion, 1)
        XCTAssertEqual(key.digest, request.digest)
        XCTAssertEqual(key.sig, request.sig)
        XCTAssertEqual(key.createdAt, stored.createdAt)
        XCTAssertEqual(key.expiresAt, stored.expiresAt)
        XCTAssertEqual(try alice.key.unwrap(try XCTUnwrap(key.encryptedKey)), raw)
        XCTAssertTrue(bob.key.publicKey.isValidSignature(key.sig, for: key.signedText))
        // By id too, each with its own copy.
        let bobs = try relay.fetchKey(channel: channel, keyID: request.keyID, as: bob)
        XCTAssertEqual(try bob.key.unwrap(try XCTUnwrap(bobs.key?.encryptedKey)), raw)
        XCTAssertFalse(bobs.rotationRequired)

        // Channels shows it as the newest key, and a successor chains on it.
        let next = try relay.rotate(channel: channel, previous: request.keyID, version: 1, recipients: [alice, bob], creator: alice)
        XCTAssertEqual(try relay.fetchKey(channel: channel, as: bob).key?.keyID, next)
        XCTAssertEqual(try relay.fetchKey(channel: channel, as: bob).key?.previousKeyID, request.keyID)
        // The older key is still fetchable by id.
        XCTAssertEqual(try relay.fetchKey(channel: channel, keyID: request.keyID, as: bob).key?.keyID, request.keyID)
    }

    func testStalePreviousKeyIsKeyConflict() throws {
        let relay = try ChannelTestRelay()
        let alice = try relay.makeUser()
        let (channel, _) = try relay.createChannel(owner: alice)
        let first = try relay.rotate(channel: channel, previous: nil, version: 1, recipients: [alice], creator: alice)
        let (again, _) = try relay.keyRequest(channel: channel, previous: nil, version: 1, recipients: [alice], creator: alice)
        let conflict = try relay.expect(.keyConflict, relay.send(.keys(again), as: alice))
        XCTAssertEqual(conflict.currentKeyID, first)
        let second = try relay.rotate(channel: channel, previous: first, version: 1, recipients: [alice], creator: alice)
        let (stale, _) = try relay.keyRequest(channel: channel, previous: first, version: 1, recipients: [alice], creator: alice)
        XCTAssertEqual(try relay.expect(.keyConflict, relay.send(.keys(stale), as: alice)).currentKeyID, second)
        // A previous_key_id that is not even this channel's.
        let (foreign, _) = try relay.keyRequest(channel: channel, previous: ID.random(), version: 1, recipients: [alice], creator: alice)
        XCTAssertEqual(try relay.expect(.keyConflict, relay.send(.keys(foreign), as: alice)).currentKeyID, second)
        // On a channel without a key, current_key_id is null (and written).
        let (empty, _) = try relay.createChannel(owner: alice)
        let (orphan, _) = try relay.keyRequest(channel: empty, previous: first, version: 1, recipients: [alice], creator: alice)
        let outcome = relay.send(.keys(orphan), as: alice)
        XCTAssertNil(try relay.expect(.keyConflict, outcome).currentKeyID)
        XCTAssertTrue(String(decoding: outcome.reply, as: UTF8.self).contains("\"current_key_id\":null"))
    }

    func testConcurrentRotationsFromTwoConnectionsOneWins() throws {
        let relay = try ChannelTestRelay()
        let (alice, bob) = (try relay.makeUser(), try relay.makeUser())
        let (channel, _) = try relay.createChannel(owner: alice, others: [bob])
        let base = try relay.rotate(channel: channel, previous: nil, version: 1, recipients: [alice, bob], creator: alice)
        let requests = [
            try relay.keyRequest(channel: channel, previous: base, version: 1, recipients: [alice, bob], creator: alice).0,
            try relay.keyRequest(channel: channel, previous: base, version: 1, recipients: [alice, bob], creator: bob).0,
        ]
        let users = [alice.id, bob.id]
        let service = relay.service, connectionString = relay.connectionString, nodeID = relay.nodeID
        let outcomes = onThreads(2) { index -> ServerFrame in
            let connection = try PostgresConnection(connectionString: connectionString)
            let outcome = service.handle(.keys(requests[index]), id: "k\(index)",
                                         context: RequestContext(connectionID: UInt64(index), nodeID: nodeID, userID: users[index]),
                                         on: connection)
            return try ServerFrame.decode(outcome.reply)
        }
        var winners: [ID] = [], conflicts: [ErrorFrame] = []
        for (index, outcome) in outcomes.enumerated() {
            switch try outcome.get() {
            case .result(_, .keys(let stored)): winners.append(stored.keyID)
            case .error(let error) where error.code == .keyConflict: conflicts.append(error)
            case let other: XCTFail("thread \(index): unexpected \(other)")
            }
        }
        XCTAssertEqual(winners.count, 1)
        XCTAssertEqual(conflicts.count, 1)
        XCTAssertEqual(conflicts.first?.currentKeyID, winners.first)
        XCTAssertEqual(try relay.fetchKey(channel: channel, as: bob).key?.keyID, winners.first)
        XCTAssertEqual(try relay.db.execute("SELECT count(*) FROM channel_keys WHERE previous_key_id = $1",
                                            [.text(base.string)]).first?.int(0), 1)
    }

    func testOneSuccessorConstraintBacksUpTheCheck() throws {
        let relay = try ChannelTestRelay()
        let alice = try relay.makeUser()
        let (channel, _) = try relay.createChannel(owner: alice)
        let first = try relay.rotate(channel: channel, previous: nil, version: 1, recipients: [alice], creator: alice)
        // As if another path had lost track of the newest key: the row check passes, the
        // constraint still refuses a second successor of "no key".
        try relay.db.execute("UPDATE channels SET current_key_id = NULL")
        let (again, _) = try relay.keyRequest(channel: channel, previous: nil, version: 1, recipients: [alice], creator: alice)
        XCTAssertEqual(try relay.expect(.keyConflict, relay.send(.keys(again), as: alice)).currentKeyID, first)
        XCTAssertEqual(try relay.db.execute("SELECT count(*) FROM channel_keys").first?.int(0), 1)
    }

    func testMembersMismatch() throws {
        let relay = try ChannelTestRelay()
        let (alice, bob, eve) = (try relay.makeUser(), try relay.makeUser(), try relay.makeUser())
        let (channel, v1) = try relay.createChannel(owner: alice)
        try relay.add(bob, to: channel, after: v1, signer: alice)
        let expected = [alice.id, bob.id].sorted()
        func check(_ request: Request.Keys, file: StaticString = #filePath, line: UInt = #line) throws {
            let error = try relay.expect(.membersMismatch, relay.send(.keys(request), as: alice), file: file, line: line)
            XCTAssertEqual(error.members, expected, file: file, line: line)
            XCTAssertEqual(error.membershipVersion, 2, file: file, line: line)
        }
        // A missing member.
        try check(relay.keyRequest(channel: channel, previous: nil, version: 2, recipients: [alice], creator: alice).0)
        // An extra one.
        try check(relay.keyRequest(channel: channel, previous: nil, version: 2, recipients: [alice, bob, eve], creator: alice).0)
        // A member twice, instead of another.
        var twice = try relay.keyRequest(channel: channel, previous: nil, version: 2, recipients: [alice, bob], creator: alice).0
        twice.encryptedKeys.append(twice.encryptedKeys[0])
        try check(twice)
        // The old membership version.
        try check(relay.keyRequest(channel: channel, previous: nil, version: 1, recipients: [alice, bob], creator: alice).0)
        _ = try relay.rotate(channel: channel, previous: nil, version: 2, recipients: [alice, bob], creator: alice)
    }

    func testWrappedKeyOfTheWrongLengthOrABadSignatureIsBadRequest() throws {
        let relay = try ChannelTestRelay()
        let (alice, bob) = (try relay.makeUser(), try relay.makeUser())
        let (channel, _) = try relay.createChannel(owner: alice, others: [bob])
        var short = try relay.keyRequest(channel: channel, previous: nil, version: 1, recipients: [alice, bob], creator: alice).0
        short.encryptedKeys[1].encryptedKey.removeLast()
        try relay.expect(.badRequest, relay.send(.keys(short), as: alice))
        var long = try relay.keyRequest(channel: channel, previous: nil, version: 1, recipients: [alice, bob], creator: alice).0
        long.encryptedKeys[0].encryptedKey.append(0)
        try relay.expect(.badRequest, relay.send(.keys(long), as: alice))
        // Signed by bob, sent by alice.
        let bobs = try relay.keyRequest(channel: channel, previous: nil, version: 1, recipients: [alice, bob], creator: bob).0
        try relay.expect(.badRequest, relay.send(.keys(bobs), as: alice))
        // The signature over another digest.
        var tampered = try relay.keyRequest(channel: channel, previous: nil, version: 1, recipients: [alice, bob], creator: alice).0
        tampered.digest = SHA256.hash(tampered.digest)
        try relay.expect(.badRequest, relay.send(.keys(tampered), as: alice))
        XCTAssertNil(try relay.fetchKey(channel: channel, as: alice).key)
    }

    func testUsedKeyIDIsBadRequest() throws {
        let relay = try ChannelTestRelay()
        let alice = try relay.makeUser()
        let (channel, _) = try relay.createChannel(owner: alice)
        let (other, _) = try relay.createChannel(owner: alice)
        let used = try relay.rotate(channel: other, previous: nil, version: 1, recipients: [alice], creator: alice)
        let (reuse, _) = try relay.keyRequest(channel: channel, previous: nil, version: 1, recipients: [alice], creator: alice,
                                              keyID: used)
        try relay.expect(.badRequest, relay.send(.keys(reuse), as: alice))
        XCTAssertNil(try relay.fetchKey(channel: channel, as: alice).key)
        // A key of another channel is not found by id here.
        try relay.expect(.notFound, relay.send(.key(.init(channelID: channel, keyID: used)), as: alice))
    }

    func testMembershipChangeExpiresTheKeyAndRotationFollows() throws {
        let relay = try ChannelTestRelay()
        let (alice, bob) = (try relay.makeUser(), try relay.makeUser())
        let (channel, v1) = try relay.createChannel(owner: alice, others: [bob])
        let first = try relay.rotate(channel: channel, previous: nil, version: 1, recipients: [alice, bob], creator: alice)
        let v2 = try relay.next(v1, channel: channel, members: [alice.id], signer: bob)
        _ = try relay.result(relay.send(.channelRemove(.init(channelID: channel, userID: bob.id, membership: v2)), as: bob))

        let expired = try relay.fetchKey(channel: channel, as: alice)
        XCTAssertTrue(expired.rotationRequired)
        XCTAssertLessThanOrEqual(try XCTUnwrap(expired.key?.expiresAt), relay.nowMillis)
        XCTAssertNotNil(expired.key?.encryptedKey)
        // The next key is for version 2's members only.
        _ = try relay.expect(.membersMismatch, relay.send(.keys(
            relay.keyRequest(channel: channel, previous: first, version: 2, recipients: [alice, bob], creator: alice).0), as: alice))
        _ = try relay.rotate(channel: channel, previous: first, version: 2, recipients: [alice], creator: alice)
        XCTAssertFalse(try relay.fetchKey(channel: channel, as: alice).rotationRequired)
    }

    func testKeyTTLIsHonoured() throws {
        var configuration = RelayConfiguration()
        configuration.keyTTLSeconds = 1
        let relay = try ChannelTestRelay(configuration: configuration)
        let alice = try relay.makeUser()
        let (channel, _) = try relay.createChannel(owner: alice)
        let (request, _) = try relay.keyRequest(channel: channel, previous: nil, version: 1, recipients: [alice], creator: alice)
        guard case .keys(let stored) = try relay.result(relay.send(.keys(request), as: alice)) else { return XCTFail("not keys") }
        XCTAssertEqual(stored.expiresAt - stored.createdAt, 1000)
        XCTAssertFalse(try relay.fetchKey(channel: channel, as: alice).rotationRequired)
        Thread.sleep(forTimeInterval: 1.2)
        let later = try relay.fetchKey(channel: channel, as: alice)
        XCTAssertTrue(later.rotationRequired)
        XCTAssertEqual(later.key?.keyID, request.keyID)
    }

    func testUnauthenticatedAndMalformedInputNeverInternal() throws {
        let relay = try ChannelTestRelay()
        let alice = try relay.makeUser()
        let (channel, v1) = try relay.createChannel(owner: alice)
        // A version so large that n+1 would be at the edge of the wire's integers.
        var huge = try relay.next(v1, channel: channel, members: [alice.id], signer: alice)
        huge.version = Int(Limits.maxInteger)
        try relay.expect(.badRequest, relay.send(.channelRemove(.init(channelID: channel, userID: alice.id, membership: huge)), as: alice))
        let far = try relay.next(v1, channel: channel, members: [alice.id], signer: alice, ts: Int(Limits.maxInteger))
        XCTAssertNotEqual(try relay.errorFrame(relay.send(.channelAdd(.init(channelID: channel, userID: alice.id, membership: far)), as: alice)).code, .internal)
        var afterHuge = Request.ChannelMembership(channelID: channel, afterVersion: Int(Limits.maxInteger))
        guard case .channelMembership(let none) = try relay.result(relay.send(.channelMembership(afterHuge), as: alice)) else {
            return XCTFail("not membership")
        }
        XCTAssertEqual(none.statements, [])
        afterHuge.afterVersion = nil
        try relay.expect(.unauthenticated, relay.send(.channelMembership(afterHuge), as: nil))
    }
}

private func randomHex(_ count: Int) -> String {
    String((0..<count).map { _ in "0123456789abcdef".randomElement() ?? "0" })
}
