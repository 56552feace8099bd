import Foundation

/// Who is in the load, before anyone exists on the relay: users by number, channels by
/// their members (the first one owns it), and the connections with what each does.
struct Topology {
    /// At most this many members per channel: the `keys` request carries one 344-character
    /// wrapped key per member and must fit the relay's 256 KiB frame limit.
    static let maxMembersPerChannel = 500

    struct Channel {
        var members: [Int]
        var needsKey: Bool
    }

    struct Connection {
        /// The account it authenticates as (nil: a raw-fanout peer).
        var user: Int?
        var subscriptions: [Int] = []
        /// Channels it sends to, round robin (nil: it does not send).
        var sends: [Int]?
        var rawPublisher = false
        var rawSubscriber = false
        /// Connects to --subscriber-url when one is given (a subscriber, not a sender).
        var atSubscriberURL = false
    }

    var users = 0
    var channels: [Channel] = []
    var connections: [Connection] = []
    /// How many connections send (the total rate is split among them).
    var senderCount: Int { connections.filter { $0.sends != nil || $0.rawPublisher }.count }

    static func make(_ options: BenchOptions) throws -> Topology {
        var topology = Topology()
        let memberCap = maxMembersPerChannel - 1
        switch options.scenario {
        case .fanout:
            // User 0 sends; the subscriber connections share at most 499 accounts.
            let accounts = min(options.users ?? options.subscribers, options.subscribers, memberCap)
            topology.users = 1 + accounts
            topology.channels = [Channel(members: Array(0...accounts), needsKey: true)]
            topology.connections = [Connection(user: 0, sends: [0])]
            topology.connections += (0..<options.subscribers).map {
                Connection(user: 1 + $0 % accounts, subscriptions: [0], atSubscriberURL: true)
            }

        case .chat:
            guard options.channels <= options.members else { throw UsageError("chat needs --channels <= --members") }
            guard (options.members + options.channels - 1) / options.channels <= maxMembersPerChannel else {
                throw UsageError("chat: at most \(maxMembersPerChannel) members per channel")
            }
            topology.users = options.members
            topology.channels = (0..<options.channels).map { channel in
                Channel(members: Array(stride(from: channel, to: options.members, by: options.channels)), needsKey: true)
            }
            if options.subscriberURL == nil {
                topology.connections = (0..<options.members).map { member in
                    Connection(user: member, subscriptions: [member % options.channels], sends: [member % options.channels])
                }
            } else {
                // Split: each member sends on one connection and follows its channel on another.
                topology.connections = (0..<options.members).map { member in
                    Connection(user: member, sends: [member % options.channels])
                }
                topology.connections += (0..<options.members).map { member in
                    Connection(user: member, subscriptions: [member % options.channels], atSubscriberURL: true)
                }
            }

        case .ingest:
            guard options.channels <= options.senders else { throw UsageError("ingest needs --channels <= --senders") }
            guard (options.senders + options.channels - 1) / options.channels <= maxMembersPerChannel else {
                throw UsageError("ingest: at most \(maxMembersPerChannel) senders per channel")
            }
            topology.users = options.senders
            topology.channels = (0..<options.channels).map { channel in
                Channel(members: Array(stride(from: channel, to: options.senders, by: options.channels)), needsKey: true)
            }
            topology.connections = (0..<options.senders).map { Connection(user: $0, sends: [$0 % options.channels]) }

        case .connections:
            let accounts = min(options.users ?? options.count, options.count)
            topology.users = accounts
            topology.channels = stride(from: 0, to: accounts, by: maxMembersPerChannel).map { first in
                Channel(members: Array(first..<min(first + maxMembersPerChannel, accounts)), needsKey: false)
            }
            topology.connections = (0..<options.count).map { index in
                let user = index % accounts
                return Connection(user: user, subscriptions: [user / maxMembersPerChannel])
            }

        case .reconnect:
            // User 0 owns every channel and sends to them in turn; subscriber account j is in
            // channel j mod channels.
            let accounts = min(options.users ?? options.subscribers, options.subscribers)
            guard (accounts + options.channels - 1) / options.channels <= memberCap else {
                throw UsageError("reconnect: at most \(memberCap) subscriber accounts per channel")
            }
            guard options.channels <= accounts else { throw UsageError("reconnect needs --channels <= --subscribers") }
            topology.users = 1 + accounts
            topology.channels = (0..<options.channels).map { channel in
                Channel(members: [0] + stride(from: channel, to: accounts, by: options.channels).map { 1 + $0 }, needsKey: true)
            }
            topology.connections = [Connection(user: 0, sends: Array(0..<options.channels))]
            topology.connections += (0..<options.subscribers).map { index in
                let account = index % accounts
                return Connection(user: 1 + account, subscriptions: [account % options.channels], atSubscriberURL: true)
            }

        case .rawFanout:
            topology.connections = [Connection(user: nil, rawPublisher: true)]
            topology.connections += (0..<options.subscribers).map { _ in Connection(user: nil, rawSubscriber: true) }
        }
        return topology
    }
}

/// The parley side of a topology once it exists on the relay.
struct Provisioned {
    var accounts: [Account]
    var channels: [ChannelSetup]
}

extension Topology {
    /// Signs up the users and creates the channels (with keys where someone sends).
    func provision(_ options: BenchOptions, runTag: UInt32, log: (String) -> Void) async throws -> Provisioned {
        guard users > 0 else { return Provisioned(accounts: [], channels: []) }
        let keyCount = min(options.keyPool, users)
        var started = Clock.now()
        let keys = try Setup.makeKeys(count: keyCount)
        log(String(format: "setup: %d RSA-2048 key pairs in %.1f s", keyCount, Clock.seconds(since: started)))

        started = Clock.now()
        let prefix = "pb" + String(runTag, radix: 16) + "-"
        let accounts = try await Setup.signUp(
            count: users, prefix: prefix, keys: keys, url: options.url, concurrency: options.setupConcurrency)
        log(String(format: "setup: %d accounts in %.1f s", users, Clock.seconds(since: started)))

        started = Clock.now()
        let channels = self.channels
        let url = options.url
        let made = try await Setup.inParallel(count: channels.count, concurrency: options.setupConcurrency) { index in
            try await Setup.createChannel(
                name: "bench-\(index)", members: channels[index].members.map { accounts[$0] }, keys: keys,
                withKey: channels[index].needsKey, url: url)
        }
        log(String(format: "setup: %d channels in %.1f s", channels.count, Clock.seconds(since: started)))
        return Provisioned(accounts: accounts, channels: made)
    }

    /// One plan per connection.
    func peerPlans(_ options: BenchOptions, provisioned: Provisioned) -> [PeerPlan] {
        let senders = senderCount
        var senderIndex: UInt32 = 0
        return connections.enumerated().map { index, connection in
            let url: URL
            if connection.rawPublisher {
                url = options.pubURL ?? options.url
            } else if connection.rawSubscriber {
                url = options.subURL ?? options.url
            } else if connection.atSubscriberURL {
                url = options.subscriberURL ?? options.url
            } else {
                url = options.url
            }
            var plan = PeerPlan(url: url, sourceAddress: options.sourceAddress(index),
                                session: connection.user.map { provisioned.accounts[$0].session })
            plan.subscriptions = connection.subscriptions.map { ChannelRef(index: $0, id: provisioned.channels[$0].id.string) }
            plan.rawSubscriber = connection.rawSubscriber
            if connection.sends != nil || connection.rawPublisher {
                let targets = (connection.sends ?? []).map { channel in
                    SendPlan.Target(channel: ChannelRef(index: channel, id: provisioned.channels[channel].id.string),
                                    keyID: provisioned.channels[channel].keyID?.string ?? "")
                }
                plan.sends = SendPlan(
                    senderIndex: senderIndex, targets: targets, rate: options.ratePerSender(senders),
                    inflight: options.inflight, phase: Double(senderIndex) / Double(max(1, senders)))
                senderIndex += 1
            }
            return plan
        }
    }
}
