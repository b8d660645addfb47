"""The emulated backends: views of a World that implement the agents' Protocols.

``emu.backends.guest:EmuGuestBackend`` (agent_guest's GuestBackend) and
``emu.backends.host:EmuHostBackend`` (agent_host's HostBackend); the agents
reach them only through these registry strings.
"""
