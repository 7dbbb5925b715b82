#ifndef ADASOFTMAX_CLIENT_COMMANDS_H_
#define ADASOFTMAX_CLIENT_COMMANDS_H_

// Subcommands of the `adasoftmax` tool. Each takes the arguments after its name, parses its own
// flags, prints a one-line error to stderr on bad input and returns the process exit code.

namespace adasoftmax::client {

// Offline commands on local files.
int RunCommand(int argc, char** argv);        // adasoftmax run
int BenchCommand(int argc, char** argv);      // adasoftmax bench
int CalibrateCommand(int argc, char** argv);  // adasoftmax calibrate
int SynthCommand(int argc, char** argv);      // adasoftmax synth
int DemoCommand(int argc, char** argv);       // adasoftmax demo

// Online commands against a running adasoftmax-server (client/online_commands.cc).
int QueryCommand(int argc, char** argv);    // adasoftmax query
int ModelsCommand(int argc, char** argv);   // adasoftmax models
int HealthCommand(int argc, char** argv);   // adasoftmax health
int LoadgenCommand(int argc, char** argv);  // adasoftmax loadgen

}  // namespace adasoftmax::client

#endif  // ADASOFTMAX_CLIENT_COMMANDS_H_
