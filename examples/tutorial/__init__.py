"""Runnable code of the driver-writing tutorials (docs/tutorials/).

Each ``chNN_*.py`` module has ``async def main()`` printing the output shown in
its chapter; ``tests/tutorials`` checks that the chapter and the code agree.
Run one from the repository root with ``python -m examples.tutorial.ch02_event_channels``.
"""
