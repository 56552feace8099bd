// parley-bot: the headless bot (signs up, joins channels, answers !ping, !echo, !rotate, !members, !help).
// Not built yet: it arrives with its own issue. Until then it prints its usage and exits.
import Foundation

let usage = """
    usage: parley-bot [options]

    the headless bot (signs up, joins channels, answers !ping, !echo, !rotate, !members, !help).
    This tool is not implemented yet; see the project's issues.

    """
FileHandle.standardError.write(Data(usage.utf8))
exit(CommandLine.arguments.dropFirst().contains { $0 == "--help" || $0 == "-h" } ? 0 : 64)
