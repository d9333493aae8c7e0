//! The fleet inventory: compose-fleet's own hosts file and Ansible inventories (YAML and INI),
//! turned into a [`Fleet`](self) of hosts with addresses, SSH options, labels and capacity.
