"""The tools that run over the sides: sweep, compare (trials, recipes, verdicts, report_plots),
benchmark, the float64 lockstep runner, and photos (a folder of real images for streamed runs).

They sit on top of everything: they may import both sides and the common layer; nothing below
them imports a tool."""
